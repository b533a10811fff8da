"""Train an RGB teacher (the frozen classifier ISP distillation starts from) and write it with its sidecar JSON.

  python -m isp_keras.train_teacher --dataset=records:.cache/cifar10_full --arch=resnet20 --epochs=20 \
      --out=data/teacher/resnet20_cifar10.keras --model_dir=runs/teacher_resnet20

Resumable: rerun the same command and it continues from the last finished epoch in --model_dir.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import keras
from absl import app, flags

from isp_keras import datasets, fsutil, models, training
from isp_keras.errors import UserError, run_main

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "records:.cache/cifar10_full", "embedded | folder:PATH | tfds:NAME | records:PATH")
flags.DEFINE_enum("arch", "resnet20", list(models.ARCHITECTURES), "Architecture.")
flags.DEFINE_integer("image_size", None, "Input size (default: the architecture's).")
flags.DEFINE_integer("epochs", 20, "Epochs.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_float("lr", 0.1, "Peak learning rate (SGD, Nesterov).")
flags.DEFINE_float("weight_decay", 5e-4, "Weight decay.")
flags.DEFINE_integer("take", None, "Use only the first N training examples (tests).")
flags.DEFINE_integer("seed", 0, "Seed.")
flags.DEFINE_string("out", "data/teacher/resnet20_cifar10.keras", "Where to write the teacher (.keras).")
flags.DEFINE_string("model_dir", "runs/teacher", "Checkpoints and logs.")


@dataclasses.dataclass
class TeacherConfig:
    dataset: str
    arch: str
    image_size: int
    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    take: int | None
    seed: int
    out: str
    model_dir: str


def train(cfg: TeacherConfig) -> dict:
    keras.utils.set_random_seed(cfg.seed)
    source = datasets.get_source(cfg.dataset, seed=cfg.seed)
    pcfg = datasets.PipelineConfig(image_size=cfg.image_size, batch_size=cfg.batch_size, noise_std=0.0,
                                   seed=cfg.seed, take=cfg.take)
    norm = datasets.compute_normalisation(source, pcfg)
    train_ds = datasets.build(source, source.train_split, pcfg, training=True, norm=norm, mode="rgb")
    test_ds = datasets.build(source, source.test_split, dataclasses.replace(pcfg, take=None, batch_size=500),
                             training=False, norm=norm, mode="rgb")
    run_dir = Path(cfg.model_dir)
    state = training.read_checkpoint_state(run_dir)
    if state:
        model = keras.saving.load_model(Path(state["path"]) / "model.keras", safe_mode=True)
        print(f"resuming from {state['path']} after epoch {state['epochs_done']}")
    else:
        model = models.build(cfg.arch, len(source.classes), cfg.image_size)
        steps = cfg.epochs * (min(cfg.take or 10**12, source.counts[source.train_split]) // cfg.batch_size)
        model.compile(optimizer=training.sgd(steps, cfg.lr, cfg.weight_decay, warmup_steps=steps // cfg.epochs),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=[keras.metrics.SparseCategoricalAccuracy(name="top1")])
    initial_epoch = state["epochs_done"] if state else 0
    start = time.time()
    checkpoint = training.AtomicCheckpoint(run_dir, lambda d: model.save(d / "model.keras"))
    nan_guard = training.StopOnNaN()
    model.fit(train_ds, epochs=cfg.epochs, initial_epoch=initial_epoch, validation_data=test_ds,
              callbacks=[checkpoint, keras.callbacks.TensorBoard(str(run_dir / "logs")), nan_guard], verbose=2)
    # Never write a half-trained or NaN teacher to --out.
    if nan_guard.bad_step is not None:
        raise UserError(f"the loss became NaN/Inf at step {nan_guard.bad_step}; the last good checkpoint is kept in "
                        f"{run_dir} (lower --lr?)")
    if checkpoint.terminated:
        raise training.Stopped(f"stopped by signal {checkpoint.signal}; rerun the same command to resume from the "
                               f"last finished epoch in {run_dir}", checkpoint.signal)
    _, top1 = model.evaluate(test_ds, verbose=0)
    spec = models.TeacherSpec(image_size=cfg.image_size, num_classes=len(source.classes), rgb_mean=norm.rgb_mean,
                              rgb_std=norm.rgb_std, classes=list(source.classes), arch=cfg.arch,
                              source=f"python -m isp_keras.train_teacher ({cfg.dataset}, {cfg.epochs} epochs)")
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    export = keras.models.clone_model(model)  # without optimizer state: smaller, and what students clone
    export.set_weights(model.get_weights())
    tmp = out.with_name(f".{out.stem}.tmp.keras")
    export.save(tmp)
    tmp.replace(out)
    models.write_spec(out, spec)
    result = {"test_top1": 100 * float(top1), "train_seconds_this_run": time.time() - start, "config": dataclasses.asdict(cfg)}
    fsutil.write_json_atomic(run_dir / "teacher_result.json", result)
    print(f"teacher {out}: clean test top-1 {100 * top1:.2f}%")
    return result


def main(argv):
    del argv
    arch_size = models.ARCHITECTURES[FLAGS.arch]["size"]
    size = FLAGS.image_size or arch_size
    if size % 2:
        raise UserError(f"--image_size={size}: must be even (Bayer 2x2 tiles)")
    train(TeacherConfig(FLAGS.dataset, FLAGS.arch, size, FLAGS.epochs, FLAGS.batch_size, FLAGS.lr,
                        FLAGS.weight_decay, FLAGS.take, FLAGS.seed, FLAGS.out, FLAGS.model_dir))


if __name__ == "__main__":
    app.run(run_main(main))
