"""Typed run configuration, built from flags in `main` only and passed down as plain values."""

from __future__ import annotations

import dataclasses
import math

from isp_keras import bayer
from isp_keras.errors import UserError


@dataclasses.dataclass
class TrainConfig:
    dataset: str = "embedded"
    teacher: str = "data/teacher/resnet20_cifar10.keras"
    student_init: str = ""  # .keras the student starts from when the teacher is a SavedModel (not cloneable)
    model_dir: str = ""
    alpha: float = 0.9
    temperature: float = 4.0
    hard_labels: str = "gt"
    noise_std: float = 0.1
    cfa: str = "RGGB"
    sensor: str = "gaussian"
    seed: int = 0
    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.01
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.2
    image_size: int | None = None
    train_take: int | None = None
    test_take: int | None = None
    stats_images: int = 10000
    strategy: str = "default"
    overwrite: bool = False
    strict: bool = False
    checkpoint_steps: int = 0
    checkpoint_epochs: int = 1
    finetune_first: int | None = None
    cached_logits: bool = False
    data_service: str = ""
    augment: bool = True
    tpu: str = ""
    qat_epochs: int = 0  # quantisation-aware fine-tuning after distillation (train only)
    qat_lr: float = 0.002

    def validate(self) -> "TrainConfig":
        for name in ("alpha", "temperature", "noise_std", "lr", "weight_decay", "warmup_epochs", "qat_lr"):
            if not math.isfinite(getattr(self, name)):
                raise UserError(f"--{name}={getattr(self, name)}: must be a finite number")
        if self.cached_logits and self.augment:
            raise UserError("--cached_logits: the teacher input must be deterministic, but random RGB augmentation "
                            "is on; pass --noaugment")
        if self.data_service and not self.data_service.startswith("grpc://"):
            raise UserError(f"--data_service={self.data_service}: expected grpc://HOST:PORT (the dispatcher's address)")
        if self.cached_logits and self.data_service:
            raise UserError("--cached_logits with --data_service: not supported (the service would split the image "
                            "and logit sources independently); use one of them")
        if self.checkpoint_steps < 0 or self.checkpoint_epochs < 1:
            raise UserError("--checkpoint_steps must be >= 0 and --checkpoint_epochs >= 1")
        if not 0.0 <= self.alpha <= 1.0:
            raise UserError(f"--alpha={self.alpha}: must be in [0, 1]")
        if self.temperature <= 0:
            raise UserError(f"--temperature={self.temperature}: must be > 0")
        if self.noise_std < 0:
            raise UserError(f"--noise_std={self.noise_std}: must be >= 0")
        if self.cfa.upper() not in bayer.CFA_PATTERNS:
            raise UserError(f"--cfa={self.cfa}: must be one of {', '.join(bayer.CFA_PATTERNS)}")
        self.cfa = self.cfa.upper()
        if self.sensor not in ("gaussian", "realistic"):
            raise UserError(f"--sensor={self.sensor}: must be gaussian or realistic")
        if self.hard_labels not in ("gt", "teacher"):
            raise UserError(f"--hard_labels={self.hard_labels}: must be gt or teacher")
        if self.qat_epochs < 0 or not self.qat_lr > 0:
            raise UserError(f"--qat_epochs={self.qat_epochs}, --qat_lr={self.qat_lr}: need qat_epochs >= 0 and "
                            "qat_lr > 0")
        if self.qat_epochs and self.strategy != "default":
            raise UserError(f"--qat_epochs={self.qat_epochs} with --strategy={self.strategy}: quantisation-aware "
                            "fine-tuning runs on one device only (its moving activation ranges are not synchronised "
                            "across replicas); pass --qat_epochs=0 and fine-tune on one device")
        if self.epochs < 1 or self.batch_size < 1:
            raise UserError("--epochs and --batch_size must be >= 1")
        if self.image_size is not None and (self.image_size < 2 or self.image_size % 2):
            raise UserError(f"--image_size={self.image_size}: must be even (the Bayer pattern tiles 2x2)")
        for name in ("train_take", "test_take"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name}={value}: must be >= 1")
        return self

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def from_flags(flag_values, **overrides) -> TrainConfig:
    """Every TrainConfig field that is also a defined flag takes the flag's value."""
    values = {}
    for field in dataclasses.fields(TrainConfig):
        if field.name in flag_values:
            values[field.name] = flag_values[field.name].value
    values.update(overrides)
    return TrainConfig(**values).validate()
