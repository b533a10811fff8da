"""Train an RGB teacher (the frozen classifier ISP distillation starts from) and write it with its sidecar JSON.
Resumable: a rerun continues from the last finished epoch in the run directory."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import keras

from isp_keras import fsutil
from isp_keras.data import pipeline, sources
from isp_keras.errors import UserError
from isp_keras.models import architectures, teachers
from isp_keras.training import checkpoint, schedule
from isp_keras.training.config import TeacherConfig


def train(cfg: TeacherConfig) -> dict:
    if cfg.arch not in architectures.ARCHITECTURES:
        raise UserError(f"--arch={cfg.arch}: must be one of {', '.join(architectures.ARCHITECTURES)}")
    cfg = dataclasses.replace(cfg, image_size=cfg.image_size or architectures.ARCHITECTURES[cfg.arch]["size"])
    if cfg.image_size % 2:
        raise UserError(f"--image_size={cfg.image_size}: must be even (Bayer 2x2 tiles)")
    keras.utils.set_random_seed(cfg.seed)
    source = sources.get_source(cfg.dataset, seed=cfg.seed)
    pcfg = pipeline.PipelineConfig(
        image_size=cfg.image_size, batch_size=cfg.batch_size, noise_std=0.0, seed=cfg.seed, take=cfg.take
    )
    norm = pipeline.compute_normalisation(source, pcfg)
    train_ds = pipeline.build(source, source.train_split, pcfg, training=True, norm=norm, mode="rgb")
    test_ds = pipeline.build(
        source,
        source.test_split,
        dataclasses.replace(pcfg, take=None, batch_size=500),
        training=False,
        norm=norm,
        mode="rgb",
    )
    run_dir = Path(cfg.model_dir)
    state = checkpoint.read_checkpoint_state(run_dir)
    if state:
        model = keras.saving.load_model(Path(state["path"]) / "model.keras", safe_mode=True)
        print(f"resuming from {state['path']} after epoch {state['epochs_done']}")
    else:
        model = architectures.build(cfg.arch, len(source.classes), cfg.image_size)
        steps = cfg.epochs * (min(cfg.take or 10**12, source.counts[source.train_split]) // cfg.batch_size)
        model.compile(
            optimizer=schedule.sgd(steps, cfg.lr, cfg.weight_decay, warmup_steps=steps // cfg.epochs),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="top1")],
        )
    initial_epoch = state["epochs_done"] if state else 0
    start = time.time()
    saver = checkpoint.AtomicCheckpoint(run_dir, lambda d: model.save(d / "model.keras"))
    nan_guard = checkpoint.StopOnNaN()
    model.fit(
        train_ds,
        epochs=cfg.epochs,
        initial_epoch=initial_epoch,
        validation_data=test_ds,
        callbacks=[saver, keras.callbacks.TensorBoard(str(run_dir / "logs")), nan_guard],
        verbose=2,
        shuffle=False,  # the pipeline shuffles
    )
    # Never write a half-trained or NaN teacher to --out.
    if nan_guard.bad_step is not None:
        raise UserError(
            f"the loss became NaN/Inf at step {nan_guard.bad_step}; the last good checkpoint is kept in "
            f"{run_dir} (lower --lr?)"
        )
    if saver.terminated:
        raise checkpoint.Stopped(
            f"stopped by signal {saver.signal}; rerun the same command to resume from the "
            f"last finished epoch in {run_dir}",
            saver.signal,
        )
    _, top1 = model.evaluate(test_ds, verbose=0)
    spec = teachers.TeacherSpec(
        image_size=cfg.image_size,
        num_classes=len(source.classes),
        rgb_mean=norm.rgb_mean,
        rgb_std=norm.rgb_std,
        classes=list(source.classes),
        arch=cfg.arch,
        source=f"python -m isp_keras.train_teacher ({cfg.dataset}, {cfg.epochs} epochs)",
    )
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    export = keras.models.clone_model(model)  # without optimizer state: smaller, and what students clone
    export.set_weights(model.get_weights())
    tmp = out.with_name(f".{out.stem}.tmp.keras")
    export.save(tmp)
    tmp.replace(out)
    teachers.write_spec(out, spec)
    result = {
        "test_top1": 100 * float(top1),
        "train_seconds_this_run": time.time() - start,
        "config": dataclasses.asdict(cfg),
    }
    fsutil.write_json_atomic(run_dir / "teacher_result.json", result)
    print(f"teacher {out}: clean test top-1 {100 * top1:.2f}%")
    return result
