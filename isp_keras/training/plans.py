"""The plan of an experiment: rows (a baseline, or a student that knows its own loss, epochs, learning rate, start
point and whether it is quantisation-aware), the levels they run at (a noise std of the sweep, a seed, a student
input, a learning rate, a RAW input of Table 2, or the single level of the other commands) and the plan that holds
them. Built by training/experiments.py, run by training/runner.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from isp_keras.errors import UserError
from isp_keras.models import students
from isp_keras.training.config import TrainConfig

BASELINES = ("teacher_clean", "teacher_raw")


@dataclasses.dataclass(frozen=True)
class Row:
    """A baseline (`alpha` None: the teacher evaluated, nothing trained) or a student row, fully specified."""

    name: str
    alpha: float | None = None
    hard_labels: str = "gt"
    finetune_first: int | None = None
    epochs: int = 0
    lr: float = 0.0
    warmup_epochs: float = 0.0
    start_from: str = ""  # "": the teacher's weights; else the name of an earlier student row of the same level
    quantisation_aware: bool = False
    # distil from start_from's float student on the student's own input (not the RGB teacher): its target is
    # agreement with the float model
    from_float: bool = False

    @property
    def trains(self) -> bool:
        return self.alpha is not None

    @property
    def needs_labels(self) -> bool:
        """Trained on ground-truth hard labels (alpha 0 uses none)."""
        return self.trains and self.hard_labels == "gt" and self.alpha > 0

    def describe(self, cfg: TrainConfig) -> str:
        if self.name == "teacher_clean":
            return "teacher on clean RGB (upper bound)"
        if self.name == "teacher_raw":
            return "teacher on the RAW input, no training"
        if self.name == "student_clean":
            return "the --student_init model on clean RGB at its own input size, no training"
        if self.name == "student_raw":
            return "the --student_init model on the RAW input at its own input size, no training"
        loss = "CE" if self.alpha == 1 else f"{self.alpha:g}*CE + {1 - self.alpha:g}*T^2*KL, T={cfg.temperature:g}"
        scope = "all layers" if self.finetune_first is None else f"first {self.finetune_first} stage(s), rest frozen"
        start = "the teacher's weights"
        if self.start_from:
            start = f"row {self.start_from}'s student"
        elif cfg.student_init:
            start = f"{Path(cfg.student_init).name}'s weights"
        qat = ", quantisation-aware (int8 simulated, BN frozen)" if self.quantisation_aware else ""
        hard = "its argmax" if self.from_float else self.hard_labels
        target = f", targets from row {self.start_from}'s float student on the same mosaics" if self.from_float else ""
        epochs = f"{self.epochs} epoch{'s' * (self.epochs != 1)}"
        return f"student from {start}: {loss}, hard labels {hard}, {scope}, {epochs} at lr {self.lr:g}{qat}{target}"


def student_row(name: str, cfg: TrainConfig, alpha: float, hard_labels: str, finetune_first: int | None = None) -> Row:
    """A student trained from the teacher's weights on the config's budget."""
    return Row(name, alpha, hard_labels, finetune_first, cfg.epochs, cfg.row_lr(name), cfg.warmup_epochs)


def qat_row(cfg: TrainConfig, start_from: str = "distilled", from_float: bool = False) -> Row:
    """Quantisation-aware fine-tuning of `start_from`'s student, so its int8 export agrees with it: with the same
    loss as the row it starts from, or (`from_float`) with that loss's targets taken from the float student itself
    (hard labels its argmax, soft labels its logits)."""
    return Row(
        f"{start_from}_qat" + ("_float" if from_float else ""),
        cfg.alpha,
        "teacher" if from_float else cfg.hard_labels,
        None,
        cfg.qat_epochs,
        cfg.qat_lr,
        0.0,
        start_from,
        quantisation_aware=True,
        from_float=from_float,
    )


def table_rows(cfg: TrainConfig, names) -> list[Row]:
    spec = {
        "teacher_clean": Row("teacher_clean"),
        "teacher_raw": Row("teacher_raw"),
        "student_clean": Row("student_clean"),
        "student_raw": Row("student_raw"),
        "gt_labels": student_row("gt_labels", cfg, 1.0, "gt"),
        "teacher_labels": student_row("teacher_labels", cfg, 1.0, "teacher"),
        "distilled": student_row("distilled", cfg, cfg.alpha, cfg.hard_labels),
        "distilled_gt": student_row("distilled_gt", cfg, cfg.alpha, "gt"),
        # Widely copied KD code multiplies the KD term by alpha: the paper's "alpha 0.9" read that way.
        "distilled_kd": student_row("distilled_kd", cfg, round(1 - cfg.alpha, 12), cfg.hard_labels),
        "distilled_qat": qat_row(cfg),
        "distilled_qat_float": qat_row(cfg, from_float=True),
    }
    return [spec[n] for n in names]


def train_rows(cfg: TrainConfig) -> list[Row]:
    """The main command: the teacher baselines, the distilled student and (--qat_epochs) its int8-ready version."""
    rows = table_rows(cfg, ("teacher_clean", "teacher_raw", "distilled"))
    return rows + ([qat_row(cfg)] if cfg.qat_epochs else [])


def ablation_rows(cfg: TrainConfig, ks) -> list[Row]:
    tuned = [student_row(f"finetune_first_{k}", cfg, cfg.alpha, cfg.hard_labels, k) for k in ks]
    return table_rows(cfg, BASELINES) + tuned + [student_row("finetune_all", cfg, cfg.alpha, cfg.hard_labels)]


@dataclasses.dataclass
class Level:
    """One set of rows on one data setting: `tag` is merged into each result row (e.g. {"raw": "merged"})."""

    cfg: TrainConfig
    dir: Path
    tag: dict = dataclasses.field(default_factory=dict)
    rows: list | None = None  # this level's own rows (same names, e.g. another learning rate); None: the plan's


@dataclasses.dataclass
class Plan:
    kind: str  # the command: train, table, sweep, ablation, table2
    cfg: TrainConfig
    rows: list
    levels: list
    make_setup: Callable | None = None  # (level, normalisation or None) -> experiment.Setup; default: data + teacher
    command: str = ""
    verbose: int | str = "auto"
    states: dict = dataclasses.field(default_factory=dict)  # level dir -> LevelState, filled by `run`
    skipped: tuple = ()  # rows not run (and why), e.g. ground-truth rows on unlabelled data; set by `run`

    @property
    def out(self) -> Path:
        return Path(self.cfg.model_dir)


def single_level(cfg: TrainConfig) -> list[Level]:
    return [Level(cfg, Path(cfg.model_dir))]


def noise_levels(cfg: TrainConfig, noise_stds) -> list[Level]:
    out = Path(cfg.model_dir)
    return [Level(dataclasses.replace(cfg, noise_std=s), out / f"noise_{s:g}", {"noise_std": s}) for s in noise_stds]


def seed_levels(levels: list[Level], seeds) -> list[Level]:
    """Each level once per seed (data order, augmentation, noise and initialisation), in sub-directories seed_N."""
    if not seeds:
        return levels
    return [
        Level(dataclasses.replace(lvl.cfg, seed=seed), lvl.dir / f"seed_{seed}", {**lvl.tag, "seed": seed})
        for lvl in levels
        for seed in seeds
    ]


def input_levels(levels: list[Level], variants) -> list[Level]:
    """Each level once per student input (infill, packed, packed_affine, packed_curve: same data, seed and budget),
    in sub-directories input_<variant>."""
    from isp_keras.training.config import student_variant

    out = []
    for lvl in levels:
        for variant in variants:
            student_input, raw_adapter = student_variant(variant)
            curve = lvl.cfg.raw_adapter_curve if raw_adapter == "curve" else []
            cfg = dataclasses.replace(
                lvl.cfg, student_input=student_input, raw_adapter=raw_adapter, raw_adapter_curve=curve
            )
            out.append(Level(cfg, lvl.dir / f"input_{variant}", {**lvl.tag, "input": variant}))
    return out


def lr_levels(cfg: TrainConfig, lrs, names) -> list[Level]:
    """The rows `names` at each learning rate, in sub-directories lr_<lr>."""
    out = Path(cfg.model_dir)
    levels = []
    for lr in lrs:
        level_cfg = dataclasses.replace(cfg, lr=lr)
        levels.append(Level(level_cfg, out / f"lr_{lr:g}", {"lr": lr}, table_rows(level_cfg, names)))
    return levels


def check_rows(rows: list[Row]) -> None:
    names = [r.name for r in rows]
    for row in rows:
        if row.start_from and row.start_from not in names[: names.index(row.name)]:
            raise ValueError(f"row {row.name} starts from {row.start_from!r}, which is not an earlier row")


def check_ks(teacher, ks) -> None:
    """Every k must name an existing stage/block of the student (checked on a throwaway clone)."""
    student = students.student_from_teacher(teacher)
    for k in ks:
        try:
            students.set_trainable_prefix(student, k)
        except UserError as exc:
            raise UserError(f"--finetune_ks={k}: {str(exc).removeprefix('--finetune_first: ')}") from None
