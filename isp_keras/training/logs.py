"""What a run writes for TensorBoard: a student row's training and evaluation scalars, every row's final test
metrics, and the image panel of the RAW the students see."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from isp_keras.data import pipeline
from isp_keras.raw import bayer
from isp_keras.training.plans import Row
from isp_keras.training.report import LABELS


class ScalarLog(keras.callbacks.Callback):
    """TensorBoard scalars of one student row: the training metrics every `every` optimizer steps (and at each epoch
    end), the evaluation metrics after each epoch and at the end, on one global step that continues across the rows
    of a chain (a quantisation-aware row goes on from the step its start row ended at). The evaluation runs on the
    data's test split, the only held-out split here; nothing is selected on it (no early stopping)."""

    def __init__(self, log_dir: Path, every: int, steps_per_epoch: int, step_offset: int, epochs: int, validate=None):
        super().__init__()
        self.train = tf.summary.create_file_writer(str(log_dir / "train"))
        self.validation = tf.summary.create_file_writer(str(log_dir / "validation"))
        self.every, self.steps, self.offset, self.epochs = every, steps_per_epoch, step_offset, epochs
        self.validate = validate
        self.epoch = 0
        self.done_in_epoch = 0  # steps of the current epoch run before this fit (a run resumed mid-epoch)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        in_epoch = self.done_in_epoch + batch + 1
        step = self.offset + self.epoch * self.steps + in_epoch
        if logs and (step % self.every == 0 or in_epoch == self.steps):
            self.write(self.train, "train", logs, step)

    def on_epoch_end(self, epoch, logs=None):
        self.done_in_epoch = 0
        if self.validate is not None and epoch + 1 < self.epochs:  # the last epoch's is the row's final evaluation
            metrics = self.validate()
            if metrics is not None:
                self.write(self.validation, "validation", metrics, self.offset + (epoch + 1) * self.steps)

    def final(self, metrics: dict) -> None:
        self.write(self.validation, "validation", metrics, self.offset + self.epochs * self.steps)

    @staticmethod
    def write(writer, prefix: str, logs: dict, step: int) -> None:
        with writer.as_default():
            for key, value in logs.items():
                if value is not None and np.ndim(value) == 0 and np.isfinite(float(value)):
                    tf.summary.scalar(f"{prefix}/{key}", float(value), step=step)
        writer.flush()

    def close(self) -> None:
        self.train.close()
        self.validation.close()


def log_test_scalars(row_dir: Path, row: dict, row_spec: Row, last_step: int) -> None:
    """Final test metrics as TensorBoard scalars (baselines as flat lines over the students' steps)."""
    writer = tf.summary.create_file_writer(str(row_dir / "logs" / "test"))
    with writer.as_default():
        for step in (last_step,) if row_spec.trains else (0, last_step):
            for key in LABELS:
                if row.get(key) is not None:
                    tf.summary.scalar(f"test/{key}", row[key], step=step)
    writer.close()


def log_image_panel(run_dir, setup, count: int = 4) -> None:
    """TensorBoard image: RGB | mosaic | bilinear infill, for a few test images (display-scaled)."""
    cfg = dataclasses.replace(setup.pipeline, take=count, batch_size=count, cache=False)
    raw, rgb, _ = next(
        iter(pipeline.build(setup.source, setup.source.test_split, cfg, training=False, norm=None, mode="mosaic"))
    )
    mosaic_rgb = tf.repeat(raw, 3, axis=-1)
    rgb = pipeline.student_scene(rgb, raw.shape[1]) if rgb.shape[1] != raw.shape[1] else rgb
    panel = tf.concat([rgb, mosaic_rgb, bayer.infill(raw, setup.cfg.cfa)], axis=2)
    writer = tf.summary.create_file_writer(str(Path(run_dir) / "logs" / "images"))
    with writer.as_default():
        tf.summary.image("rgb | mosaic | infill", tf.clip_by_value(panel, 0.0, 1.0), step=0, max_outputs=count)
    writer.close()
