"""Configuration of the data commands (plain values, no TensorFlow: parsed before TensorFlow loads)."""

from __future__ import annotations

import dataclasses

from isp_keras import paths
from isp_keras.config import option
from isp_keras.errors import UserError
from isp_keras.raw.cfa import CFA_PATTERNS
from isp_keras.raw.config import RawFormatOptions

PAIR_MODES = ("merged", "short")


@dataclasses.dataclass
class RecordsConfig:
    dataset: str = option("embedded", "embedded | folder:PATH | tfds:NAME | records:PATH")
    out: str | None = option(None, "Output records directory (replaced atomically when complete).", required=True)
    examples_per_shard: int = option(1024, "Images per TFRecord shard.")
    format: str = option("jpeg", "Encoding of re-encoded images.", choices=("jpeg", "png"))
    quality: int = option(95, "JPEG quality (1-100).")
    max_size: int | None = option(None, "Shrink so the shorter side is at most this many pixels.")
    take: int | None = option(None, "Only the first N images of each split.")

    def validate(self) -> RecordsConfig:
        if self.examples_per_shard < 1:
            raise UserError(f"--examples_per_shard={self.examples_per_shard}: must be >= 1")
        if not 1 <= self.quality <= 100:
            raise UserError(f"--quality={self.quality}: must be in 1..100")
        if self.max_size is not None and self.max_size < 2:
            raise UserError(f"--max_size={self.max_size}: must be >= 2")
        if self.take is not None and self.take < 1:
            raise UserError(f"--take={self.take}: must be >= 1")
        return self


@dataclasses.dataclass
class EmbeddedConfig:
    archive: str = option(
        str(paths.PROJECT_ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"),
        "CIFAR-10 JPEG archive (tar.gz).",
    )
    out: str = option(str(paths.EMBEDDED_DATA), "Output records directory.")
    train_per_class: int = option(2000, "Training images per class (5000 = all).")
    test_per_class: int = option(1000, "Test images per class (1000 = all).")
    shards: int = option(2, "Shards per split.")
    seed: int = option(0, "Seed for the subset and the shuffle.")

    def validate(self) -> EmbeddedConfig:
        if min(self.train_per_class, self.test_per_class, self.shards) < 1:
            raise UserError("--train_per_class, --test_per_class and --shards must be >= 1")
        return self


@dataclasses.dataclass
class ServiceConfig:
    port: int = option(5050, "Dispatcher port (ignored with --dispatcher).")
    workers: int = option(2, "tf.data service workers to start in this process.")
    dispatcher: str = option("", "HOST:PORT of a running dispatcher: start only workers for it.")
    worker_host: str = option("localhost", "Host name the workers advertise (reachable by the trainer).")

    def validate(self) -> ServiceConfig:
        if self.workers < 0 or (self.workers == 0 and self.dispatcher):
            raise UserError(f"--workers={self.workers}: must be >= 1 with --dispatcher, >= 0 otherwise")
        return self


@dataclasses.dataclass
class PairsConfig(RawFormatOptions):
    pairs: str | None = option(None, "csv:FILE, hdrplus:DIR or raw:DIR (RGB rendered by LibRaw)", required=True)
    out: str | None = option(None, "Cache directory to write (or reuse).", required=True)
    teacher: str = option(
        "embedded", ".keras teacher with sidecar JSON, a .tflite classifier, `embedded`, or a keras.applications name."
    )
    mode: str = option("merged", "hdrplus: RAW = merged.dng or the reference payload frame.", choices=PAIR_MODES)
    cfa: str = option("RGGB", "Canonical CFA phase.", choices=CFA_PATTERNS)
    patch_size: int = option(256, "Patch side (even).")
    test_fraction: float = option(0.2, "Fraction of groups in the test split.")
    seed: int = option(0, "Split seed.")
    min_teacher_prob: float = option(0.8, "Test patches kept only above this teacher top probability.")
    strict: bool = option(False, "Stop at the first unreadable pair instead of skipping it.")
    max_patches_per_pair: int = option(0, "0: every patch; else a seeded sample of this many per pair.")
    synthesize_bursts: int = option(0, "Fill a missing hdrplus:DIR with this many synthetic bursts first.")
