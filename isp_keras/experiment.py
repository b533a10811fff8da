"""One experiment's machinery, shared by `train` and `experiments/*`: set up data and teacher, train a student
row (distilled, GT labels, teacher labels, fine-tune first k), evaluate rows, write results."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from isp_keras import datasets, distiller, fsutil, models, quantise, training
from isp_keras.config import TrainConfig
from isp_keras.errors import UserError

RESULTS = "results.json"


@dataclasses.dataclass
class Setup:
    cfg: TrainConfig
    source: datasets.Source
    teacher: keras.Model
    spec: models.TeacherSpec
    norm: datasets.Normalisation
    pipeline: datasets.PipelineConfig
    student_init: keras.Model | None = None  # what the student is cloned from (default: the teacher)

    def student_source(self) -> keras.Model:
        return self.student_init if self.student_init is not None else self.teacher

    def train_ds(self, start_step: int = 0):
        """The run's batches from global step `start_step` on (the same data a run that never stopped sees).

        --cached_logits: the teacher input is replaced by stored teacher logits (computed once, see logit_cache);
        --data_service: the pipeline runs on tf.data service workers (see data_service)."""
        logits = self.cached_teacher_logits() if self.cfg.cached_logits else None
        ds = datasets.build(self.source, self.source.train_split, self.pipeline, training=True, norm=self.norm,
                            steps_per_epoch=self.steps_per_epoch(), start_step=start_step, epochs=self.cfg.epochs,
                            teacher_logits=logits)
        if self.cfg.data_service:
            from isp_keras import data_service

            ds = data_service.distribute(ds, self.cfg.data_service)
        return ds

    def cached_teacher_logits(self):
        from isp_keras import logit_cache

        return logit_cache.load_or_compute(self.teacher, self.cfg.teacher, self.source, self.source.train_split,
                                           self.pipeline, self.norm, Path(self.cfg.model_dir) / "teacher_logits")

    def test_ds(self):
        cfg = dataclasses.replace(self.pipeline, take=self.cfg.test_take, batch_size=max(self.pipeline.batch_size, 256))
        return datasets.build(self.source, self.source.test_split, cfg, training=False, norm=self.norm)

    def steps_per_epoch(self) -> int:
        n = self.source.counts[self.source.train_split]
        if self.cfg.train_take:
            n = min(n, self.cfg.train_take)
        steps = n // self.pipeline.batch_size
        if steps < 1:
            raise UserError(f"{self.source.name}: {n} training images, fewer than one batch of {self.pipeline.batch_size}")
        return steps


def prepare_run_dir(run_dir, overwrite: bool) -> Path:
    """A run directory that holds finished results is only reused with --overwrite; otherwise resume or start."""
    run_dir = Path(run_dir)
    if (run_dir / RESULTS).exists() and not overwrite:
        raise UserError(f"{run_dir}: holds a finished run ({RESULTS}); pass --overwrite or choose another --model_dir")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"{run_dir}: cannot write the run directory ({exc.strerror or exc})") from None
    if overwrite and (run_dir / RESULTS).exists():
        (run_dir / RESULTS).unlink()
    if overwrite and training.clear_checkpoints(run_dir):
        logging.info("%s: --overwrite: starting over, old checkpoints removed", run_dir)
    return run_dir


# Flags that may change between a run and its resumption; any other difference would mix two experiments.
RESUME_MAY_DIFFER = ("model_dir", "overwrite", "strict", "test_take", "strategy", "checkpoint_steps",
                     "checkpoint_epochs", "data_service", "tpu", "cached_logits")


def resume_normalisation(run_dir, cfg: TrainConfig) -> datasets.Normalisation | None:
    """For a run directory holding a checkpoint: the statistics it was trained with (from config.json), after
    checking the flags match the interrupted run's. None when there is nothing to resume."""
    run_dir = Path(run_dir)
    if not any(True for _ in run_dir.rglob(training.STATE_NAME)) or not (run_dir / "config.json").exists():
        return None
    try:
        saved = json.loads((run_dir / "config.json").read_text())
    except ValueError as exc:
        raise UserError(f"{run_dir / 'config.json'}: unreadable ({exc}); pass --overwrite to start over") from None
    old, new = saved.get("config", {}), cfg.to_json()
    changed = [k for k in old if k in new and k not in RESUME_MAY_DIFFER and old[k] != new[k]]
    if changed:
        k = changed[0]
        raise UserError(f"{run_dir}: holds an unfinished run with --{k}={old[k]} (now {new[k]}); rerun with the "
                        f"same flags to resume, or pass --overwrite to start over")
    if "normalisation" not in saved:
        return None
    try:
        norm = datasets.Normalisation(**saved["normalisation"])
    except TypeError as exc:
        raise UserError(f"{run_dir / 'config.json'}: bad normalisation ({exc})") from None
    return datasets.check_normalisation(norm, str(run_dir / "config.json"))


def setup(cfg: TrainConfig, norm: datasets.Normalisation | None = None) -> Setup:
    """Load data and teacher, check they fit each other, compute (or reuse) the normalisation statistics."""
    source = datasets.get_source(cfg.dataset, seed=cfg.seed, strict=cfg.strict)
    teacher, spec = models.load_teacher(cfg.teacher)
    image_size = cfg.image_size or (spec.image_size if spec else models.input_size(teacher)[0])
    if image_size is None:
        raise UserError(f"--teacher={cfg.teacher}: the teacher takes any size; set --image_size")
    if image_size % 2:
        raise UserError(f"--image_size={image_size}: must be even (the Bayer pattern tiles 2x2)")
    models.check_teacher_matches(teacher, image_size, len(source.classes), cfg.teacher)
    if spec and spec.classes and list(spec.classes) != list(source.classes):
        logging.warning("teacher classes %s differ in name from the data's %s; matching by index",
                        spec.classes, source.classes)
    student_init = models.load_student_init(cfg.student_init, teacher) if cfg.student_init else None
    if student_init is None and not models.is_cloneable(teacher):
        raise UserError(f"--teacher={cfg.teacher}: a SavedModel teacher cannot be cloned into a student; give "
                        f"--student_init=MODEL.keras (same architecture, the weights the student starts from)")
    models.freeze(teacher)
    pipeline = datasets.PipelineConfig(image_size=image_size, batch_size=cfg.batch_size, cfa=cfg.cfa,
                                       noise_std=cfg.noise_std, seed=cfg.seed, take=cfg.train_take,
                                       sensor=cfg.sensor, augment=cfg.augment)
    if norm is None:
        if spec is None:
            logging.warning("%s has no sidecar JSON; teacher RGB statistics are computed from the data", cfg.teacher)
        norm = datasets.compute_normalisation(
            source, pipeline, cfg.stats_images, rgb_mean=spec.rgb_mean if spec else None,
            rgb_std=spec.rgb_std if spec else None, channel_order=spec.channel_order if spec else "RGB")
    if spec is None:
        spec = models.TeacherSpec(image_size, len(source.classes), norm.rgb_mean, norm.rgb_std, classes=source.classes,
                                  source=cfg.teacher)
    return Setup(cfg, source, teacher, spec, norm, pipeline, student_init)


def baseline_rows(s: Setup) -> list[dict]:
    test = s.test_ds()
    clean = distiller.evaluate(test, s.teacher, on="teacher_rgb")
    raw = distiller.evaluate(test, s.teacher, s.teacher, on="student")
    return [_row("teacher_clean", clean), _row("teacher_raw", raw)]


def _row(name, metrics) -> dict:
    return {"name": name, "top1": round(float(metrics["top1"]), 3), "top5": round(float(metrics["top5"]), 3),
            "agreement": round(float(metrics["agreement"]), 3)}


def train_student(s: Setup, run_dir, name: str, alpha: float, hard_labels: str, finetune_first: int | None = None,
                  verbose: int | str = "auto", start_from: keras.Model | None = None,
                  quantisation_aware: bool = False) -> tuple[dict, keras.Model]:
    """Train one student row, resumably in run_dir; returns (row, student).

    The student starts from the teacher's weights (or `start_from`'s). `quantisation_aware`: train through
    quantise.quantisation_aware (int8 simulated, BN frozen), then snap the weights to their int8 grid."""
    cfg = s.cfg
    run_dir = Path(run_dir)
    keras.utils.set_random_seed(cfg.seed)
    strategy = _strategy(cfg.strategy, cfg.tpu)
    run_dir = _distribute().worker_dir(strategy, run_dir)
    steps = s.steps_per_epoch()
    with strategy.scope():
        student = models.student_from_teacher(start_from if start_from is not None else s.student_source(),
                                              sync_bn=strategy.num_replicas_in_sync > 1)
        trainable = models.set_trainable_prefix(student, finetune_first)
        trained = student
        if quantisation_aware:
            trained = quantise.quantisation_aware(student)
        optimizer = training.sgd(cfg.epochs * steps, cfg.lr, cfg.weight_decay,
                                 warmup_steps=int(cfg.warmup_epochs * steps))
        model = distiller.Distiller(trained, s.teacher, alpha=alpha, temperature=cfg.temperature,
                                    hard_labels=hard_labels, cached_logits=cfg.cached_logits)
        model.compile(optimizer=optimizer)
        state = training.read_checkpoint_state(run_dir)
        if state:
            trained.load_weights(Path(state["path"]) / "student.weights.h5")
            distiller.load_optimizer_state(optimizer, trained.trainable_variables,
                                           Path(state["path"]) / "optimizer.npz")
            logging.info("resuming %s after epoch %d from %s", name, state["epochs_done"], state["path"])
    start_step = int(state.get("step", state["epochs_done"] * steps)) if state else 0
    logging.info("%s: training %d layers of %d for %d epochs x %d steps", name, len(trainable),
                 len(student.layers), cfg.epochs, steps)

    def save(folder):
        trained.save_weights(folder / "student.weights.h5")
        distiller.save_optimizer_state(optimizer, folder / "optimizer.npz")

    nan_guard = training.StopOnNaN()
    checkpoint = training.AtomicCheckpoint(run_dir, save, steps_per_epoch=steps, every_steps=cfg.checkpoint_steps,
                                           every_epochs=cfg.checkpoint_epochs)
    callbacks = [checkpoint, nan_guard, keras.callbacks.TensorBoard(str(run_dir / "logs"))]
    fit = model.fit
    if _distribute().needs_custom_loop(strategy):  # Keras fit fails under MultiWorkerMirroredStrategy
        from isp_keras import custom_loop

        fit = functools.partial(custom_loop.fit, model, strategy=strategy)
    epoch, done_in_epoch = divmod(start_step, steps)
    if done_in_epoch and epoch < cfg.epochs:  # resumed mid-epoch: finish that epoch, then whole ones
        fit(s.train_ds(start_step), epochs=epoch + 1, initial_epoch=epoch, steps_per_epoch=steps - done_in_epoch,
                  verbose=verbose, callbacks=callbacks)
        epoch += 1
    if epoch < cfg.epochs and nan_guard.bad_step is None and not checkpoint.terminated:
        fit(s.train_ds(epoch * steps), epochs=cfg.epochs, initial_epoch=epoch, steps_per_epoch=steps,
                  verbose=verbose, callbacks=callbacks)
    if nan_guard.bad_step is not None:
        kept = training.read_checkpoint_state(run_dir)
        kept = f"the last good checkpoint ({kept['folder']}) is kept" if kept else "no checkpoint had been saved yet"
        raise UserError(f"{name}: the loss became NaN/Inf at step {nan_guard.bad_step}; training stopped and {kept} "
                        f"in {run_dir} (lower --lr?)")
    if checkpoint.terminated:
        raise training.Stopped(f"{name}: stopped by signal {checkpoint.signal} at step {checkpoint.saved_step}, "
                               f"checkpoint saved in {run_dir}; rerun the same command to resume",
                               checkpoint.signal)
    if quantisation_aware:
        quantise.snap_weights(student)
        quantise.unfreeze_batchnorm(student)
    metrics = distiller.evaluate(s.test_ds(), s.teacher, student, on="student")
    return _row(name, metrics), student


def _distribute():
    from isp_keras import distribute

    return distribute


def _strategy(name: str, tpu: str = ""):
    return _distribute().get_strategy(name, tpu)


def save_student(student: keras.Model, run_dir, s: Setup) -> Path:
    """The student alone (never the Distiller) plus what serving needs: normalisation, CFA, classes."""
    run_dir = Path(run_dir)
    path = run_dir / "student.keras"
    tmp = run_dir / ".student.tmp.keras"
    plain = keras.models.clone_model(student)  # drops optimizer state and sync-BN flags from training
    plain.set_weights(student.get_weights())
    plain.trainable = True
    try:
        plain.save(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise fsutil.write_error(path, exc) from exc
    fsutil.write_json_atomic(run_dir / "student.json", {
        "cfa": s.cfg.cfa, "noise_std": s.cfg.noise_std, "image_size": s.pipeline.image_size,
        "classes": list(s.source.classes), "normalisation": s.norm.to_json(), "teacher": s.cfg.teacher})
    return path


def write_results(run_dir, rows: list[dict], cfg: TrainConfig, wall_seconds: float, extra: dict | None = None) -> dict:
    for row in rows:
        for key in ("top1", "top5", "agreement"):
            if not (isinstance(row[key], float) and math.isfinite(row[key]) and 0.0 <= row[key] <= 100.0):
                raise ValueError(f"row {row['name']}: {key}={row[key]!r} is not a percentage")
    results = {"rows": rows, "config": cfg.to_json(), "wall_seconds": round(float(wall_seconds), 2), **(extra or {})}
    fsutil.write_json_atomic(Path(run_dir) / RESULTS, results)
    return results


def format_table(rows: list[dict]) -> str:
    lines = ["| row | top-1 % | top-5 % | agreement % |", "|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['top1']:.2f} | {r['top5']:.2f} | {r['agreement']:.2f} |")
    return "\n".join(lines)


def log_image_panel(run_dir, s: Setup, count: int = 4) -> None:
    """TensorBoard image: RGB | mosaic | bilinear infill, for a few test images (display-scaled)."""
    from isp_keras import bayer

    cfg = dataclasses.replace(s.pipeline, take=count, batch_size=count, cache=False)
    raw, rgb, _ = next(iter(datasets.build(s.source, s.source.test_split, cfg, training=False, norm=None,
                                          mode="mosaic")))
    mosaic_rgb = tf.repeat(raw, 3, axis=-1)
    panel = tf.concat([rgb, mosaic_rgb, bayer.infill(raw, s.cfg.cfa)], axis=2)
    writer = tf.summary.create_file_writer(str(Path(run_dir) / "logs" / "images"))
    with writer.as_default():
        tf.summary.image("rgb | mosaic | infill", tf.clip_by_value(panel, 0.0, 1.0), step=0, max_outputs=count)
    writer.close()


def write_config(run_dir, cfg: TrainConfig, s: Setup | None = None) -> None:
    data = {"config": cfg.to_json()}
    if s is not None:
        data.update({"image_size": s.pipeline.image_size, "classes": list(s.source.classes),
                     "normalisation": s.norm.to_json(), "teacher_spec": s.spec.to_json()})
    fsutil.write_json_atomic(Path(run_dir) / "config.json", data)


def timer() -> float:
    return time.time()


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, default=lambda o: np.asarray(o).tolist())
