"""The typed configuration of training students: built from flags in a command's `main` only, passed down as plain
values. No TensorFlow here (commands parse their flags before TensorFlow loads)."""

from __future__ import annotations

import dataclasses
import math

from isp_keras import paths
from isp_keras.config import option
from isp_keras.data.normalisation import RAW_SCALES
from isp_keras.data.student_inputs import NAMES as STUDENT_INPUTS
from isp_keras.errors import UserError
from isp_keras.models.curves import ADAPTERS, curve_problem
from isp_keras.raw.cfa import CFA_PATTERNS

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
SENSORS = ("gaussian", "realistic")


@dataclasses.dataclass
class TrainConfig:
    dataset: str = option("embedded", "embedded | folder:PATH | tfds:NAME | records:PATH")
    teacher: str = option(
        "embedded",
        "embedded (the ResNet-20 CIFAR-10 teacher in data/teacher), a "
        "keras.applications name (ImageNet weights), a .keras file (+ sidecar JSON), a SavedModel or a TFLite "
        "classifier (.tflite, imported as a float Keras model returning logits).",
    )
    student_init: str = option(
        "",
        "The model the student starts from (architecture and weights): a .keras file, or a .tflite classifier, e.g. "
        "a smaller network than the teacher, with the teacher's outputs. Its input may be another size than the "
        "teacher's: it then sees the mosaic of the scene resized to that size. Needed when --teacher is a "
        "SavedModel, which cannot be cloned. Default: the teacher itself.",
    )
    student_batchnorm: bool = option(
        False,
        "With a .tflite teacher (BatchNorm folded into its convolutions): give the student a BatchNormalization after "
        "every convolution but the classifier, fitted to a batch of RAW training inputs so that the student starts "
        "as the teacher's function, and trains with BatchNorm's tolerance of larger learning rates.",
    )
    student_input: str = option(
        "infill",
        "What the student sees: infill (the bilinearly infilled, normalised mosaic [H, W, 3]) or packed (the "
        "mosaic's 2x2 tiles [H/2, W/2, 4]; its first convolution is the teacher's composed with the infill and "
        "the normalisation, so nothing is infilled in training or serving).",
        choices=STUDENT_INPUTS,
    )
    raw_adapter: str = option(
        "none",
        "A learnable RAW adapter in front of a packed student (--student_input=packed), identity at the start: "
        "affine (per-site gain and offset, then a 1x1 colour mix of the four sites) or curve (the same with a "
        "learnable monotone tone curve between them). See models/adapter.py.",
        choices=ADAPTERS,
    )
    raw_adapter_curve: list[float] = option(
        [],
        "--raw_adapter=curve (or --student_inputs=...,packed_curve): the tone curve's initial values at evenly "
        "spaced knots over [0, 1], non-decreasing (e.g. a gamma for linear sensor data; the packed stem then "
        "normalises by statistics measured after it). Empty: the identity (9 knots), so training starts from the "
        "teacher's function.",
    )
    raw_adapter_lr_scale: float = option(
        1.0,
        "The RAW adapter's learning rate as a multiple of the network's (--lr): its gradients are scaled, so the "
        "schedule and momentum apply alike (its decoupled weight decay is unchanged).",
    )
    model_dir: str = option("", "Run directory (default: runs/<command>).")
    alpha: float = option(0.9, "Weight of the hard-label cross-entropy, in [0, 1].")
    temperature: float = option(4.0, "Distillation temperature T > 0.")
    hard_labels: str = option("gt", "Hard labels: ground truth or teacher argmax.", choices=("gt", "teacher"))
    noise_std: float = option(0.1, "Gaussian noise std added to the [0,1] mosaic.")
    cfa: str = option("RGGB", "Bayer CFA pattern.", choices=CFA_PATTERNS)
    sensor: str = option(
        "gaussian",
        "RAW simulator: gaussian (--noise_std) or realistic (unprocessing + shot/read noise).",
        choices=SENSORS,
    )
    seed: int = option(0, "Seed (data order, augmentation, noise, initialisation).")
    epochs: int = option(3, "Training epochs per student row.")
    batch_size: int = option(128, "Global batch size.")
    lr: float = option(0.01, "Peak learning rate (Nesterov SGD, warmup then cosine).")
    row_lrs: list[str] = option(
        [], "Per-row peak learning rates ROW=LR (e.g. chosen by experiments.tune), overriding --lr for those rows."
    )
    weight_decay: float = option(5e-4, "Weight decay.")
    warmup_epochs: float = option(0.2, "Linear warmup length in epochs.")
    image_size: int | None = option(None, "Input size (default: the teacher's).")
    train_take: int | None = option(None, "Use only the first N training examples.")
    test_take: int | None = option(None, "Evaluate on the first N test examples.")
    train_per_class: int | None = option(
        None,
        "--dataset=folder:PATH only: train on N images of every class (a seeded draw, the same images for every "
        "--seed), e.g. to give data sets of different class counts the same training-set size.",
    )
    test_per_class: int | None = option(None, "--dataset=folder:PATH only: test on N images of every class.")
    stats_images: int = option(10000, "Training images used for the per-site statistics.")
    raw_scale: str = option(
        "auto",
        "The scale the student's RAW input reaches the teacher's first layer in: teacher (RAW standardised per Bayer "
        "site, then mapped to the mean/std of the teacher's own input on the training photos), unit (zero mean, "
        "unit std per site), auto (teacher, unless the teacher's input is already within 0.1 of zero mean and "
        "unit std on the data: a teacher trained on per-channel standardised RGB).",
        choices=RAW_SCALES,
    )
    holdout_fraction: float = option(
        0.0,
        "Tune on training data only: hold out this fraction of the training split (seeded draw) and evaluate on it "
        "instead of the test split, which is then never read. 0: off.",
    )
    strategy: str = option("default", "tf.distribute strategy.", choices=STRATEGIES)
    cpu_replicas: int = option(2, "Logical CPU devices for --strategy=mirrored without GPUs.")
    tpu: str = option("", "--strategy=tpu: TPU name or grpc:// address ('' or 'local': this TPU VM).")
    data_service: str = option("", "grpc://HOST:PORT of a tf.data service dispatcher that runs the training pipeline.")
    cached_logits: bool = option(False, "Compute the teacher's logits once and train from them (needs --noaugment).")
    augment: bool = option(True, "Random crop + flip of the training RGB (off: deterministic teacher input).")
    overwrite: bool = option(False, "Replace a finished run in --model_dir.")
    strict: bool = option(False, "Stop at the first unreadable input instead of skipping it.")
    checkpoint_steps: int = option(
        0, "Also checkpoint every N optimizer steps (0: only at epoch ends and on SIGTERM/Ctrl-C)."
    )
    checkpoint_epochs: int = option(1, "Checkpoint every N epochs (and after the last).")
    log_steps: int = option(20, "Write training scalars to TensorBoard every N optimizer steps.")
    qat_epochs: int = option(
        1,
        "Quantisation-aware fine-tuning epochs after distillation (the distilled_qat row: "
        "int8 rounding simulated, BN frozen, weights snapped to the int8 grid), so that the int8 "
        "export agrees with the saved student. 0: no such row. Skipped, with a note, under a "
        "multi-replica strategy (its moving activation ranges are per replica).",
    )
    qat_lr: float = option(0.002, "Peak learning rate of quantisation-aware fine-tuning (cosine, no warmup).")

    def adapters(self) -> set[str]:
        """The RAW adapters the run's students have."""
        return {self.raw_adapter}

    def initial_curve(self) -> list[float]:
        """The RAW adapter's initial tone curve when a packed student starts from one (empty: none, or identity)."""
        packed_curve = self.student_input == "packed" and self.raw_adapter == "curve"
        return list(self.raw_adapter_curve) if packed_curve else []

    def validate(self) -> TrainConfig:
        for name in (
            "alpha",
            "temperature",
            "noise_std",
            "lr",
            "weight_decay",
            "warmup_epochs",
            "qat_lr",
            "holdout_fraction",
        ):
            if not math.isfinite(getattr(self, name)):
                raise UserError(f"--{name}={getattr(self, name)}: must be a finite number")
        if self.cached_logits and self.augment:
            raise UserError(
                "--cached_logits: the teacher input must be deterministic, but random RGB augmentation "
                "is on; pass --noaugment"
            )
        if self.data_service and not self.data_service.startswith("grpc://"):
            raise UserError(f"--data_service={self.data_service}: expected grpc://HOST:PORT (the dispatcher's address)")
        if self.cached_logits and self.data_service:
            raise UserError(
                "--cached_logits with --data_service: not supported (the service would split the image "
                "and logit sources independently); use one of them"
            )
        self.row_lr()
        if self.checkpoint_steps < 0 or self.checkpoint_epochs < 1:
            raise UserError("--checkpoint_steps must be >= 0 and --checkpoint_epochs >= 1")
        if self.log_steps < 1:
            raise UserError(f"--log_steps={self.log_steps}: must be >= 1")
        if self.cpu_replicas < 1:
            raise UserError(f"--cpu_replicas={self.cpu_replicas}: must be >= 1")
        if not 0.0 <= self.alpha <= 1.0:
            raise UserError(f"--alpha={self.alpha}: must be in [0, 1]")
        if self.temperature <= 0:
            raise UserError(f"--temperature={self.temperature}: must be > 0")
        if self.noise_std < 0:
            raise UserError(f"--noise_std={self.noise_std}: must be >= 0")
        if not 0.0 <= self.holdout_fraction < 1.0:
            raise UserError(f"--holdout_fraction={self.holdout_fraction}: must be in [0, 1)")
        if self.cfa.upper() not in CFA_PATTERNS:
            raise UserError(f"--cfa={self.cfa}: must be one of {', '.join(CFA_PATTERNS)}")
        self.cfa = self.cfa.upper()
        if self.sensor not in SENSORS:
            raise UserError(f"--sensor={self.sensor}: must be gaussian or realistic")
        if self.hard_labels not in ("gt", "teacher"):
            raise UserError(f"--hard_labels={self.hard_labels}: must be gt or teacher")
        if self.strategy not in STRATEGIES:
            raise UserError(f"--strategy={self.strategy}: must be one of {', '.join(STRATEGIES)}")
        if self.qat_epochs < 0 or not self.qat_lr > 0:
            raise UserError(
                f"--qat_epochs={self.qat_epochs}, --qat_lr={self.qat_lr}: need qat_epochs >= 0 and qat_lr > 0"
            )
        if self.epochs < 1 or self.batch_size < 1:
            raise UserError("--epochs and --batch_size must be >= 1")
        if self.student_input not in STUDENT_INPUTS:
            raise UserError(f"--student_input={self.student_input}: must be one of {', '.join(STUDENT_INPUTS)}")
        if self.raw_adapter not in ADAPTERS:
            raise UserError(f"--raw_adapter={self.raw_adapter}: must be one of {', '.join(ADAPTERS)}")
        if self.raw_adapter != "none" and self.student_input != "packed":
            raise UserError(
                f"--raw_adapter={self.raw_adapter}: needs --student_input=packed (the adapter acts on the sensor's "
                f"values per CFA site, which the {self.student_input} input has already mixed)"
            )
        if not (math.isfinite(self.raw_adapter_lr_scale) and self.raw_adapter_lr_scale > 0):
            raise UserError(f"--raw_adapter_lr_scale={self.raw_adapter_lr_scale:g}: must be a finite number > 0")
        if self.raw_adapter_lr_scale != 1 and not self.adapters() - {"none"}:
            raise UserError(
                f"--raw_adapter_lr_scale={self.raw_adapter_lr_scale:g}: the students have no RAW adapter "
                "(--raw_adapter=affine|curve, or --student_inputs=...,packed_affine|packed_curve)"
            )
        if self.raw_adapter_curve:
            if "curve" not in self.adapters():
                raise UserError(f"--raw_adapter_curve: only with --raw_adapter=curve (got {self.raw_adapter})")
            problem = curve_problem(self.raw_adapter_curve)
            if problem:
                raise UserError(f"--raw_adapter_curve={','.join(f'{v:g}' for v in self.raw_adapter_curve)}: {problem}")
        if self.student_input == "packed" and self.image_size is not None and self.image_size % 2:
            raise UserError(f"--student_input=packed: image size {self.image_size} is odd; packing needs even sides")
        if self.image_size is not None and (self.image_size < 2 or self.image_size % 2):
            raise UserError(f"--image_size={self.image_size}: must be even (the Bayer pattern tiles 2x2)")
        for name in ("train_take", "test_take", "train_per_class", "test_per_class"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"--{name}={value}: must be >= 1")
        return self

    def per_class(self) -> dict:
        """The class-balanced subset asked for, per split ({} for none)."""
        return {split: n for split, n in (("train", self.train_per_class), ("test", self.test_per_class)) if n}

    def row_lr(self, name: str = "") -> float:
        """The peak learning rate of row `name`: its --row_lrs entry, else --lr."""
        table = {}
        for item in self.row_lrs:
            row, sep, value = item.partition("=")
            try:
                table[row] = float(value)
            except ValueError:
                sep = ""
            if not sep or not math.isfinite(table[row]) or table[row] <= 0:
                raise UserError(f"--row_lrs={item}: expected ROW=LR with a positive learning rate")
        return table.get(name, self.lr)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


TABLE_ROWS = (
    "teacher_clean",
    "teacher_raw",
    "gt_labels",
    "teacher_labels",
    "distilled",
    "distilled_gt",
    "distilled_kd",
    "distilled_qat",
    "distilled_qat_float",
    "student_clean",
    "student_raw",
)
STUDENT_BASELINES = ("student_clean", "student_raw")  # the --student_init model, untrained
DEFAULT_TABLE_ROWS = ["teacher_clean", "teacher_raw", "gt_labels", "teacher_labels", "distilled"]
PAIR_MODES = ("merged", "short")


def _unique(values: list, flag: str) -> list:
    if not values:
        raise UserError(f"--{flag}: empty list")
    if len(set(values)) != len(values):
        raise UserError(f"--{flag}={','.join(map(str, values))}: repeated values")
    return values


STUDENT_VARIANTS = ("infill", "packed", "packed_affine", "packed_curve")


def student_variant(name: str) -> tuple[str, str]:
    """(--student_input, --raw_adapter) of a --student_inputs entry."""
    student_input, _, adapter = name.partition("_")
    return student_input, adapter or "none"


@dataclasses.dataclass
class TableConfig(TrainConfig):
    rows: list[str] = option(
        DEFAULT_TABLE_ROWS,
        f"Rows to run, from {', '.join(TABLE_ROWS)} (distilled uses --hard_labels; distilled_gt always the ground "
        "truth; distilled_kd reads --alpha the other way, as weight of the KD term: CE weight 1 - alpha, the hard "
        "labels of distilled; student_clean and student_raw: the --student_init model, untrained, on the clean RGB "
        "and on the RAW input at its own input size).",
    )
    seeds: list[int] = option(
        [],
        "Run every row once per seed (sub-directories seed_N) and report mean +- std and the paired difference "
        "of distilled against each other row with a 95% interval. Empty: one run with --seed.",
    )
    student_inputs: list[str] = option(
        [],
        f"Run every row once per student input, side by side (sub-directories input_<input>; replaces "
        f"--student_input and --raw_adapter): {', '.join(STUDENT_VARIANTS)} (packed_<adapter>: packed with that "
        "--raw_adapter). Reports the paired difference of each input's distilled student against the first's.",
    )
    dry_run: bool = option(False, "Validate the flags and print the plan; read no data, train nothing.")

    def adapters(self) -> set[str]:
        if not self.student_inputs:
            return super().adapters()
        return {student_variant(v)[1] for v in self.student_inputs}

    def validate(self) -> TableConfig:
        super().validate()
        if self.seeds:
            _unique(self.seeds, "seeds")
        if self.student_inputs:
            unknown = [v for v in _unique(self.student_inputs, "student_inputs") if v not in STUDENT_VARIANTS]
            if unknown:
                raise UserError(
                    f"--student_inputs: unknown input {unknown[0]!r}; choose from {', '.join(STUDENT_VARIANTS)}"
                )
        unknown = [n for n in _unique(self.rows, "rows") if n not in TABLE_ROWS]
        if unknown:
            raise UserError(f"--rows: unknown row {unknown[0]!r}; choose from {', '.join(TABLE_ROWS)}")
        for name in ("distilled_qat", "distilled_qat_float"):
            if name in self.rows and ("distilled" not in self.rows or not self.qat_epochs):
                raise UserError(f"--rows={name}: needs the distilled row (it starts from it) and --qat_epochs >= 1")
        for name in STUDENT_BASELINES:
            if name in self.rows and not self.student_init:
                raise UserError(f"--rows={name}: evaluates the --student_init model; give --student_init")
        return self


@dataclasses.dataclass
class SweepConfig(TableConfig):
    noise_stds: list[float] = option([0.0, 0.05, 0.1, 0.2, 0.3], "Noise stds to sweep (replaces --noise_std).")

    def validate(self) -> SweepConfig:
        super().validate()
        if self.seeds or self.student_inputs:
            raise UserError(
                "--seeds and --student_inputs: not supported by the sweep; run the table once per noise std instead"
            )
        if min(_unique(self.noise_stds, "noise_stds")) < 0:
            raise UserError(f"--noise_stds: {min(self.noise_stds):g} is negative")
        return self


TUNE_ROWS = ["gt_labels", "teacher_labels", "distilled", "distilled_gt", "distilled_kd"]


@dataclasses.dataclass
class TuneConfig(TableConfig):
    rows: list[str] = option(
        TUNE_ROWS, f"Student rows to tune, from {', '.join(TUNE_ROWS)} (other rows of a table's --rows are ignored)."
    )
    lrs: list[float] = option([1e-4, 3e-4, 1e-3], "Peak learning rates to try (replaces --lr).")
    holdout_fraction: float = option(
        0.1, "Fraction of the training split held out to score the learning rates on (the test split is not read)."
    )

    def validate(self) -> TuneConfig:
        super().validate()
        if self.seeds or self.row_lrs or self.student_inputs:
            raise UserError(
                "--seeds, --row_lrs and --student_inputs: not used by tune (it tries each of --lrs on every row)"
            )
        if not self.holdout_fraction > 0:
            raise UserError("--holdout_fraction: tune scores on held-out training data; must be > 0")
        students = [r for r in self.rows if r in TUNE_ROWS]  # the baselines of a table's --rows train nothing
        if not students:
            raise UserError(f"--rows={','.join(self.rows)}: no student row to tune ({', '.join(TUNE_ROWS)})")
        self.rows = students
        if min(_unique(self.lrs, "lrs")) <= 0:
            raise UserError(f"--lrs: {min(self.lrs):g} is not a positive learning rate")
        return self


@dataclasses.dataclass
class AblationConfig(TrainConfig):
    finetune_ks: list[int] = option(
        [1, 2, 3],
        "k values: rows finetune_first_k train only the stem and the first k "
        "stages/blocks (classifier frozen); a finetune_all row is always added.",
    )
    dry_run: bool = option(False, "Validate the flags and print the plan; read no data, train nothing.")

    def validate(self) -> AblationConfig:
        super().validate()
        if min(_unique(self.finetune_ks, "finetune_ks")) < 1:
            raise UserError(f"--finetune_ks={','.join(map(str, self.finetune_ks))}: every k must be >= 1")
        return self


@dataclasses.dataclass
class Table2Config(TrainConfig):
    pairs: str = option("", "csv:FILE (header raw,rgb,group), hdrplus:DIR or raw:DIR (see isp_keras/data/pairs.py).")
    modes: list[str] = option(list(PAIR_MODES), "RAW inputs: merged and/or short (the burst's reference frame).")
    patch_size: int = option(256, "Side of the aligned non-overlapping patches (even).")
    min_teacher_prob: float = option(0.8, "Test patches kept only if the teacher's top probability exceeds this.")
    test_fraction: float = option(0.2, "Fraction of groups (bursts) in the test split.")
    max_patches_per_pair: int = option(
        0,
        "0: every patch; else a seeded sample of this many per pair (keeps a "
        "full-resolution HDR+ cache to a manageable size).",
    )
    cache_dir: str = option("", "Patch caches (default: <model_dir>/cache/<mode>).")
    synthesize_bursts: int = option(
        0,
        "If > 0 and hdrplus:DIR is missing, write this many synthetic bursts there "
        "first (from the embedded test images, unseen by the teacher).",
    )
    burst_tiles: int = option(2, "Synthetic bursts: images per frame side (frame = tiles x image size).")
    burst_frames: int = option(3, "Synthetic bursts: payload frames (merged noise = 1/frames).")
    short_exposure: float = option(0.25, "Synthetic bursts: exposure of the payload frames.")

    def validate(self) -> Table2Config:
        super().validate()
        if not self.pairs:
            raise UserError("--pairs: required (csv:FILE, hdrplus:DIR or raw:DIR)")
        if self.student_input != "infill":
            raise UserError(f"--student_input={self.student_input}: table2 trains infill students only")
        self.modes = list(dict.fromkeys(self.modes))
        if not self.modes or any(m not in PAIR_MODES for m in self.modes):
            raise UserError(f"--modes={','.join(self.modes)}: each must be one of {', '.join(PAIR_MODES)}")
        if self.patch_size < 2 or self.patch_size % 2:
            raise UserError(f"--patch_size={self.patch_size}: must be even (the Bayer pattern tiles 2x2)")
        if self.burst_tiles < 1 or self.burst_frames < 1 or not 0 < self.short_exposure <= 1:
            raise UserError("--burst_tiles and --burst_frames must be >= 1 and --short_exposure in (0, 1]")
        return self


@dataclasses.dataclass
class TeacherConfig:
    dataset: str = option("records:.cache/cifar10_full", "embedded | folder:PATH | tfds:NAME | records:PATH")
    arch: str = option("resnet20", "Architecture (models.architectures.ARCHITECTURES).")
    image_size: int | None = option(None, "Input size (default: the architecture's).")
    epochs: int = option(20, "Epochs.")
    batch_size: int = option(128, "Batch size.")
    lr: float = option(0.1, "Peak learning rate (SGD, Nesterov).")
    weight_decay: float = option(5e-4, "Weight decay.")
    take: int | None = option(None, "Use only the first N training examples (tests).")
    seed: int = option(0, "Seed.")
    out: str = option(str(paths.EMBEDDED_TEACHER), "Where to write the teacher (.keras).")
    model_dir: str = option(paths.default_run_dir("train_teacher"), "Checkpoints and logs.")

    def validate(self) -> TeacherConfig:
        if self.epochs < 1 or self.batch_size < 1:
            raise UserError("--epochs and --batch_size must be >= 1")
        return self
