"""The one experiment runner, used by `train`, `table`, `sweep`, `ablation` and `table2`.

An experiment is a list of rows run at one or more levels (a noise std of the sweep, a RAW input of Table 2, or
the single level of the other commands), all on the same data, split, seed and budget. A row is a baseline (the
teacher evaluated on clean RGB or on the RAW input) or a student that knows its own loss, epochs, learning rate,
start point (the teacher, or an earlier row's student) and whether it is quantisation-aware. Each row lives in
its own sub-directory (row.json once finished, checkpoints, student.weights.h5, the exportable student.keras +
student.json, TensorBoard logs), so
`tensorboard --logdir <model_dir>` shows the rows side by side, and a rerun skips finished rows and resumes an
interrupted one. The run directory holds config.json (the settings, checked on resume: only RESUMABLE may
differ), one normalisation.json per level, results.json (the contract: rows of name/top1/top5/agreement in
percent, config, wall_seconds) and results.md.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from isp_keras import fsutil, paths
from isp_keras.config import default_of
from isp_keras.data import normalisation, pipeline, sources
from isp_keras.errors import UserError
from isp_keras.models import students, teachers
from isp_keras.training import experiment
from isp_keras.training.config import DEFAULT_TABLE_ROWS, TrainConfig

CONFIG_FILE = "config.json"
NORM_FILE = "normalisation.json"
ROW_FILE = "row.json"
RESULTS = "results.json"
RESULTS_MD = "results.md"
PLOT_FILE = "sweep_top1.png"
PLOT_SIZE = (1100, 480)
STUDENT_WEIGHTS = "student.weights.h5"
# Settings that may differ between a run and its resumption without changing any row's numbers. The last four only
# say which rows and levels to run: adding rows, noise levels, k values or RAW inputs to a run computes only the new
# ones.
RESUMABLE = (
    "model_dir",
    "overwrite",
    "strict",
    "strategy",
    "cpu_replicas",
    "tpu",
    "checkpoint_steps",
    "checkpoint_epochs",
    "data_service",
    "cached_logits",
    "log_steps",
    "dry_run",
    "rows",
    "noise_stds",
    "finetune_ks",
    "modes",
    "seeds",
    "lrs",
    "student_inputs",
)
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
        loss = "CE" if self.alpha == 1 else f"{self.alpha:g}*CE + {1 - self.alpha:g}*T^2*KL, T={cfg.temperature:g}"
        scope = "all layers" if self.finetune_first is None else f"first {self.finetune_first} stage(s), rest frozen"
        start = f"row {self.start_from}'s student" if self.start_from else "the teacher's weights"
        qat = ", quantisation-aware (int8 simulated, BN frozen)" if self.quantisation_aware else ""
        return (
            f"student from {start}: {loss}, hard labels {self.hard_labels}, {scope}, {self.epochs} epochs at lr "
            f"{self.lr:g}{qat}"
        )


def student_row(name: str, cfg: TrainConfig, alpha: float, hard_labels: str, finetune_first: int | None = None) -> Row:
    """A student trained from the teacher's weights on the config's budget."""
    return Row(name, alpha, hard_labels, finetune_first, cfg.epochs, cfg.row_lr(name), cfg.warmup_epochs)


def qat_row(cfg: TrainConfig, start_from: str = "distilled") -> Row:
    """Quantisation-aware fine-tuning of `start_from`'s student (same loss), so its int8 export agrees with it."""
    return Row(
        f"{start_from}_qat",
        cfg.alpha,
        cfg.hard_labels,
        None,
        cfg.qat_epochs,
        cfg.qat_lr,
        0.0,
        start_from,
        quantisation_aware=True,
    )


def table_rows(cfg: TrainConfig, names) -> list[Row]:
    spec = {
        "teacher_clean": Row("teacher_clean"),
        "teacher_raw": Row("teacher_raw"),
        "gt_labels": student_row("gt_labels", cfg, 1.0, "gt"),
        "teacher_labels": student_row("teacher_labels", cfg, 1.0, "teacher"),
        "distilled": student_row("distilled", cfg, cfg.alpha, cfg.hard_labels),
        "distilled_gt": student_row("distilled_gt", cfg, cfg.alpha, "gt"),
        # Widely copied KD code multiplies the KD term by alpha: the paper's "alpha 0.9" read that way.
        "distilled_kd": student_row("distilled_kd", cfg, round(1 - cfg.alpha, 12), cfg.hard_labels),
        "distilled_qat": qat_row(cfg),
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


# ---------------------------------------------------------------- running


def run(plan: Plan, log=print) -> tuple[list[dict], dict]:
    """Run (or resume) every row at every level. Returns ([{**level.tag, "rows": [...]}], {row dir: seconds})."""
    check_rows(plan.rows)
    plan.skipped = label_check(plan)
    for name, why in plan.skipped:
        log(f"note: row {name} skipped: {why}")
    fresh = not plan.out.exists()
    prepare_out(plan)
    levels, seconds = [], {}
    try:
        for level in plan.levels:
            rows, secs = run_level(plan, level, log)
            levels.append({**level.tag, "rows": rows})
            seconds.update({str((level.dir / name).relative_to(plan.out)): s for name, s in secs.items()})
    except UserError:
        forget_if_empty(plan.out, fresh)
        raise
    return levels, seconds


def forget_if_empty(out: Path, fresh: bool) -> None:
    """A run refused before any row started (bad data, say) leaves nothing behind: the directory it created holds
    no file but its config.json, and goes."""
    if fresh and out.is_dir() and [p for p in out.rglob("*") if not p.is_dir()] == [out / CONFIG_FILE]:
        shutil.rmtree(out)


def multi_replica(cfg: TrainConfig) -> bool:
    from isp_keras.training import distribute

    return distribute.get_strategy(cfg.strategy, cfg.tpu).num_replicas_in_sync > 1


def runnable_rows(plan: Plan, level: Level, log) -> list[Row]:
    """The plan's rows, without quantisation-aware ones under a multi-replica strategy: their moving activation
    ranges are per replica, so such a row is skipped with a note (fine-tune on one device instead)."""
    skipped = {name for name, _ in plan.skipped}
    rows = [r for r in (level.rows or plan.rows) if r.name not in skipped]
    if any(r.quantisation_aware for r in rows) and multi_replica(level.cfg):
        skipped = [r.name for r in rows if r.quantisation_aware]
        log(
            f"note: {', '.join(skipped)} skipped under --strategy={level.cfg.strategy} (quantisation-aware "
            f"fine-tuning runs on one device: its activation ranges are not synchronised across replicas)"
        )
        rows = [r for r in rows if not r.quantisation_aware]
    return rows


def label_check(plan: Plan) -> tuple:
    """On unlabelled data: rows trained on ground truth are skipped (with the reason) when they came with the
    command's default rows, and are an error when asked for by name (--rows) or by --hard_labels=gt."""
    needing = [r for r in plan.rows if r.needs_labels or (r.start_from and _needs_labels(plan, r.start_from))]
    if not needing or sources.is_labelled(plan.cfg.dataset):
        return ()
    cfg = plan.cfg
    why = f"--dataset={cfg.dataset} has no labels (no class folders or label feature)"
    chosen = getattr(cfg, "rows", None)
    if chosen is not None and chosen != DEFAULT_TABLE_ROWS:
        asked = [r.name for r in needing if r.name in chosen and r.hard_labels == "gt" and r.name != "distilled"]
        if asked:
            raise UserError(f"--rows={','.join(chosen)}: {asked[0]} trains on ground truth, but {why}")
    if any(r.name in ("distilled", "distilled_qat") or r.name.startswith("finetune_") for r in needing):
        raise UserError(
            f"--hard_labels=gt: the distilled student needs ground truth, but {why}; pass --hard_labels=teacher"
        )
    return tuple((r.name, f"it trains on ground truth, but {why}") for r in needing)


def _needs_labels(plan: Plan, name: str) -> bool:
    row = next(r for r in plan.rows if r.name == name)
    return row.needs_labels or (bool(row.start_from) and _needs_labels(plan, row.start_from))


@dataclasses.dataclass
class LevelState:
    """What running a level produced in this process: its setup and the students trained (by row name)."""

    setup: object = None
    students: dict = dataclasses.field(default_factory=dict)
    baselines: dict | None = None


def level_setup(plan: Plan, level: Level, state: LevelState):
    """Data and teacher of a level, with the level's saved normalisation (computed and saved the first time)."""
    if state.setup is None:
        norm_path = level.dir / NORM_FILE
        norm = normalisation.load_normalisation(norm_path) if norm_path.exists() else None
        make = plan.make_setup or (lambda lvl, n: experiment.setup(lvl.cfg, norm=n))
        state.setup = make(level, norm)
        if state.setup.norm != norm:  # new, or completed with the statistics after an adapter's curve
            normalisation.save_normalisation(norm_path, state.setup.norm)
        ks = [row.finetune_first for row in plan.rows if row.finetune_first]
        if ks:
            check_ks(state.setup.teacher, ks)
    return state.setup


def run_level(plan: Plan, level: Level, log) -> tuple[list[dict], dict]:
    rows = runnable_rows(plan, level, log)
    by_name = {row.name: row for row in rows}
    state = plan.states.setdefault(str(level.dir), LevelState())
    finished = {row.name: read_row(level.dir / row.name) for row in rows}
    for row in rows:
        if finished[row.name]:
            log(f"{level.dir / row.name}: finished earlier, {headline(finished[row.name]['row'])}")

    def first_step(row: Row, steps: int) -> int:
        """Global step a row starts at: a chained row goes on where its start row ended."""
        if not row.start_from:
            return 0
        start = by_name[row.start_from]
        return first_step(start, steps) + start.epochs * steps

    for row in rows:
        if finished[row.name] is not None:
            continue
        s = level_setup(plan, level, state)
        row_dir = level.dir / row.name
        log(f"{row_dir}: {row.describe(level.cfg)}")
        start = time.time()
        steps = s.steps_per_epoch()
        if row.trains:
            start_model = student_of(s, level, row.start_from, state.students) if row.start_from else None
            result, student = experiment.train_student(
                s, row, row_dir, start_from=start_model, step_offset=first_step(row, steps), verbose=plan.verbose
            )
            student.save_weights(row_dir / STUDENT_WEIGHTS)
            experiment.save_student(student, row_dir, s)  # any row's student can be exported (--student=ROW_DIR)
            state.students[row.name] = student
        else:
            if state.baselines is None:
                state.baselines = {r["name"]: r for r in experiment.baseline_rows(s)}
            result = state.baselines[row.name]
        result = {**result, **level.tag}
        spent = round(time.time() - start, 1)
        last_step = max((first_step(r, steps) + r.epochs * steps for r in rows if r.trains), default=1)
        log_test_scalars(row_dir, result, row, first_step(row, steps) + row.epochs * steps if row.trains else last_step)
        finished[row.name] = {"row": result, "seconds": spent}
        fsutil.write_json_atomic(row_dir / ROW_FILE, finished[row.name])
        log(f"{row_dir}: {headline(result)} ({spent:.0f} s)")
    return [finished[r.name]["row"] for r in rows], {r.name: finished[r.name]["seconds"] for r in rows}


def headline(row: dict) -> str:
    return ", ".join(f"{LABELS[k]} {row[k]:.2f}%" for k in LABELS if row.get(k) is not None)


def student_of(s, level: Level, name: str, trained: dict):
    """The student of row `name` of this level: trained in this process, or its saved final weights."""
    if name in trained:
        return trained[name]
    path = level.dir / name / STUDENT_WEIGHTS
    if not path.exists():
        raise UserError(
            f"{level.dir / name}: finished, but {STUDENT_WEIGHTS} is missing; pass --overwrite to redo the rows"
        )
    student = experiment.build_student(s, None, sync_bn=False)
    student.load_weights(path)
    trained[name] = student
    return student


def final_student(plan: Plan, level: Level):
    """(setup, the last student row's model) of `level` after `run`: what the train command saves."""
    names = [r.name for r in runnable_rows(plan, level, lambda _: None) if r.trains]
    if not names:
        raise UserError(f"{plan.out}: no student row to save")
    state = plan.states.setdefault(str(level.dir), LevelState())
    s = level_setup(plan, level, state)
    return s, student_of(s, level, names[-1], state.students)


def log_test_scalars(row_dir: Path, row: dict, row_spec: Row, last_step: int) -> None:
    """Final test metrics as TensorBoard scalars (baselines as flat lines over the students' steps)."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(row_dir / "logs" / "test"))
    with writer.as_default():
        for step in (last_step,) if row_spec.trains else (0, last_step):
            for key in LABELS:
                if row.get(key) is not None:
                    tf.summary.scalar(f"test/{key}", row[key], step=step)
    writer.close()


def read_row(row_dir: Path) -> dict | None:
    path = row_dir / ROW_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return None
    return data if isinstance(data, dict) and data.get("row", {}).get("name") == row_dir.name else None


def check_ks(teacher, ks) -> None:
    """Every k must name an existing stage/block of the student (checked on a throwaway clone)."""
    student = students.student_from_teacher(teacher)
    for k in ks:
        try:
            students.set_trainable_prefix(student, k)
        except UserError as exc:
            raise UserError(f"--finetune_ks={k}: {str(exc).removeprefix('--finetune_first: ')}") from None


# ---------------------------------------------------------------- dry run


def plan_text(plan: Plan) -> str:
    """What the command would do, validated as far as possible without reading any data or training."""
    cfg = plan.cfg
    teacher_desc, teacher, spec = _describe_teacher(cfg.teacher)
    data_desc, train_count, num_classes = sources.describe(cfg.dataset)
    image_size = cfg.image_size or (spec.image_size if spec else (teachers.input_size(teacher)[0] if teacher else None))
    if teacher is not None and image_size and num_classes:
        teachers.check_teacher_matches(teacher, image_size, num_classes, cfg.teacher)
    ks = [r.finetune_first for r in plan.rows if r.finetune_first]
    if teacher is not None and ks:
        check_ks(teacher, ks)
    steps = "(steps set by the data)"
    if train_count is not None:
        n = min(train_count, cfg.train_take or train_count)
        steps = f"{n // cfg.batch_size} steps ({n} images)"
    noise = ", ".join(f"{s:g}" for s in dict.fromkeys(lvl.cfg.noise_std for lvl in plan.levels))
    lines = [
        f"{plan.kind} (dry run: no data read, nothing trained) -> {plan.out}",
        f"  data:     {data_desc}; test {cfg.test_take or 'all'} images"
        + "".join(f", {n} {split} images per class" for split, n in cfg.per_class().items()),
        f"  teacher:  {teacher_desc}",
        f"  raw:      {image_size or '? (from the teacher)'} px, CFA {cfg.cfa}, "
        + (f"noise std {noise}" if cfg.sensor == "gaussian" else "realistic sensor (shot and read noise)")
        + f", seed {cfg.seed}",
        f"  budget:   per student row {cfg.epochs} epochs x {steps}, batch {cfg.batch_size}; Nesterov SGD lr "
        f"{cfg.lr:g} (warmup {cfg.warmup_epochs:g} epochs, cosine), weight decay {cfg.weight_decay:g}",
    ]
    if image_size:
        inputs = {(lvl.cfg.student_input, lvl.cfg.raw_adapter): lvl.cfg for lvl in plan.levels}
        for (student_input, adapter), level_cfg in inputs.items():
            student_spec, teacher_spec = _pipeline_spec(level_cfg, image_size)[0]
            front = f" + RAW adapter {adapter}" if adapter != "none" else ""
            which = f" ({student_input}{front})" if len(inputs) > 1 or front else ""
            lines.append(
                f"  pipeline{which}: student input {student_spec.shape} {student_spec.dtype.name}, "
                f"teacher input {teacher_spec.shape} {teacher_spec.dtype.name}"
            )
    if ks and teacher is None:
        lines.append("  k values are checked against the model when the teacher loads")
    lines.append("  rows:")
    for level in plan.levels:
        for row in level.rows or plan.rows:
            done = " [done]" if read_row(level.dir / row.name) else ""
            lines.append(f"    {str(level.dir / row.name) + ':':<52} {row.describe(level.cfg)}{done}")
    return "\n".join(lines)


def _describe_teacher(name: str):
    if name in teachers.KERAS_APPLICATIONS:
        import keras

        model = getattr(keras.applications, name)(weights=None, classifier_activation=None)
        return f"keras.applications.{name} (ImageNet weights, downloaded on the first real run)", model, None
    if Path(paths.teacher_path(name)).exists():
        model, spec = teachers.load_teacher(name)
        arch = spec.arch if spec and spec.arch else model.name
        return f"{name} ({arch}, {teachers.num_outputs(model)} classes)", model, spec
    return f"{name} (not present here; a real run needs it)", None, None


def _pipeline_spec(cfg: TrainConfig, image_size: int):
    """The training pipeline's element spec, built on an empty stand-in source (traced, never iterated)."""
    import tensorflow as tf

    signature = (tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([], tf.int32))
    stub = sources.Source(
        "dry-run",
        [],
        {},
        None,
        lambda split: tf.data.Dataset.from_generator(lambda: iter(()), output_signature=signature),
    )
    norm = normalisation.Normalisation([0.0] * 3, [1.0] * 3, [0.0] * 3, [1.0] * 3)
    pcfg = experiment.pipeline_config(cfg, image_size)
    return pipeline.build(stub, "train", pcfg, training=True, norm=norm).element_spec


# ---------------------------------------------------------------- the run directory


def level_fields(plan: Plan) -> set:
    """Config fields each level sets for itself (a sweep's noise_std, replaced by noise_stds; the student input and
    RAW adapter of --student_inputs): not run settings."""
    fields = {k for level in plan.levels for k in level.tag}
    return fields | {"student_input", "raw_adapter"} if "input" in fields else fields


def run_config(plan: Plan) -> dict:
    """The run's settings as recorded in config.json and results.json (without the per-level fields)."""
    skip = level_fields(plan)
    return {k: v for k, v in dataclasses.asdict(plan.cfg).items() if k not in skip}


def guarded_config(plan: Plan) -> dict:
    return {k: v for k, v in run_config(plan).items() if k not in RESUMABLE}


def recorded_config(plan: Plan, recorded: dict) -> dict:
    """A config.json's settings, a field it lacks (written before that field existed) read as the field's default,
    the value such a run was made with."""
    defaults = {f.name: default_of(f) for f in dataclasses.fields(plan.cfg)}
    return {**{k: v for k, v in defaults.items() if k in run_config(plan)}, **recorded}


def prepare_out(plan: Plan) -> None:
    """Start, resume (same settings only) or, with --overwrite, redo the planned rows in --model_dir."""
    out = plan.out
    record = {"command": plan.kind, "config": run_config(plan)}
    path = out / CONFIG_FILE
    if plan.cfg.overwrite:
        clear(plan)
    elif path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError as exc:
            raise UserError(f"{path}: unreadable ({exc}); pass --overwrite to start afresh") from None
        if old.get("command") != plan.kind:
            raise UserError(
                f"{out}: holds a {old.get('command')} run, not a {plan.kind} run; choose another --model_dir"
            )
        new = guarded_config(plan)
        skip = set(RESUMABLE) | level_fields(plan)
        before = {k: v for k, v in recorded_config(plan, old.get("config", {})).items() if k not in skip}
        changed = [k for k in sorted(set(new) | set(before)) if new.get(k) != before.get(k)]
        if changed:
            k = changed[0]
            raise UserError(
                f"{out}: its rows were made with --{k}={before.get(k)} (now {new.get(k)}); "
                f"rerun with the same flags to resume, pass --overwrite to redo them, or choose another "
                f"--model_dir"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
        fsutil.write_json_atomic(path, record)
    except OSError as exc:
        raise UserError(f"{out}: cannot write the run directory ({exc.strerror or exc})") from None


def clear(plan: Plan) -> None:
    for level in plan.levels:
        for row in plan.rows:
            if (level.dir / row.name).is_dir():
                shutil.rmtree(level.dir / row.name)
        (level.dir / NORM_FILE).unlink(missing_ok=True)
    for name in (CONFIG_FILE, RESULTS, RESULTS_MD, PLOT_FILE, "student.keras", "student.json"):
        (plan.out / name).unlink(missing_ok=True)


# ---------------------------------------------------------------- results


# The metrics of a results row, with their table headings; top1/top5 are None on unlabelled data, the _subset pair
# exists when the data holds a subset of the teacher's classes.
LABELS = {
    "top1": "top-1",
    "top5": "top-5",
    "top1_subset": "top-1 (data's classes)",
    "top5_subset": "top-5 (data's classes)",
    "agreement": "agreement",
    "agreement_top5": "agreement top-5",
}


def check_percentages(rows: list[dict]) -> None:
    for row in rows:
        for key in LABELS:
            value = row.get(key)
            if value is None and key not in ("agreement",):
                continue
            if not (isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 100.0):
                raise ValueError(f"row {row['name']}: {key}={value!r} is not a percentage")


def write_results(plan: Plan, levels: list[dict], wall_seconds: float, extra: dict | None = None) -> dict:
    """results.json: {"rows": [...]} (one level) or {"sweep": [{"noise_std", "rows"}, ...]}, plus config,
    wall_seconds, the command and the seconds each row took."""
    for level in levels:
        check_percentages(level["rows"])
    config = run_config(plan)
    if plan.kind == "sweep":
        body = {"sweep": levels}
    else:
        body = {"rows": [row for level in levels for row in level["rows"]]}
    results = {
        **body,
        "config": config,
        "wall_seconds": round(float(wall_seconds), 2),
        "experiment": plan.kind,
        "command": plan.command,
        **(extra or {}),
    }
    fsutil.write_json_atomic(plan.out / RESULTS, results)
    return results


def format_table(rows: list[dict]) -> str:
    tagged = [k for k in ("raw", "input", "seed", "lr") if any(k in r for r in rows)]
    metrics = [k for k in LABELS if any(k in r for r in rows)]
    head = "".join(f"| {k} " for k in tagged) + "| row | " + " | ".join(f"{LABELS[k]} %" for k in metrics) + " |"
    lines = [head, "|---" * len(tagged) + "|---|" + "---:|" * len(metrics)]
    for r in rows:
        cells = "".join(f"| {r[k]} " for k in tagged)
        values = " | ".join("-" if r.get(k) is None else f"{r[k]:.2f}" for k in metrics)
        lines.append(f"{cells}| {r['name']} | {values} |")
    return "\n".join(lines)


SWEEP_METRICS = ("top1", "top1_subset", "agreement")


def sweep_metrics(levels: list[dict]) -> list[str]:
    """The sweep's measures that the rows have: top-1 (none on unlabelled data), top-1 on the data's classes (when
    they are a subset of the teacher's), agreement with the teacher (how the label-free rows compare)."""
    rows = [r for lvl in levels for r in lvl["rows"]]
    return [k for k in SWEEP_METRICS if any(r.get(k) is not None for r in rows)]


def format_sweep(levels: list[dict]) -> str:
    """One table per measure: rows (lines) by noise std (columns)."""
    names = [r["name"] for r in levels[0]["rows"]]
    tables = []
    for key in sweep_metrics(levels):
        lines = [
            f"{LABELS[key].capitalize()} %:",
            "",
            "| row | " + " | ".join(f"std {lvl['noise_std']:g}" for lvl in levels) + " |",
            "|---|" + "---:|" * len(levels),
        ]
        for name in names:
            values = [_value(lvl, name, key) for lvl in levels]
            lines.append(f"| {name} | " + " | ".join("-" if v is None else f"{v:.2f}" for v in values) + " |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def _value(level: dict, name: str, key: str) -> float | None:
    return next(r.get(key) for r in level["rows"] if r["name"] == name)


def _level_values(plan: Plan, key: str, default) -> str:
    values = [lvl.tag[key] for lvl in plan.levels if key in lvl.tag]
    return ", ".join(f"{v:g}" for v in dict.fromkeys(values)) if values else f"{default:g}"


def summary(plan: Plan) -> str:
    """The settings of a run in a sentence: data, RAW simulation, seeds, budget and loss."""
    cfg = plan.cfg
    noise = _level_values(plan, "noise_std", cfg.noise_std)
    seeds = _level_values(plan, "seed", cfg.seed)
    lrs = [r.lr for lvl in plan.levels for r in (lvl.rows or plan.rows) if r.trains and not r.quantisation_aware]
    lr = ", ".join(f"{v:g}" for v in dict.fromkeys(lrs)) if lrs else f"{cfg.lr:g}"
    take = f", first {cfg.train_take} training images" if cfg.train_take else ""
    if cfg.train_per_class:
        take = f", {cfg.train_per_class} training images per class{take}"
    test = f"{cfg.test_take or 'all'} images"
    if cfg.test_per_class:
        test = f"{cfg.test_per_class} per class, {test}"
    if cfg.holdout_fraction:
        test = f"{test} of a seeded {cfg.holdout_fraction:g} of the training split held out; the test split unread"
    return (
        f"Data {cfg.dataset} (test: {test}), CFA {cfg.cfa}, noise std {noise}, seed {seeds}, RAW input scale "
        f"{cfg.raw_scale}. Every student row "
        f"starts from the teacher `{cfg.teacher}` and trains {cfg.epochs} epochs{take}, batch {cfg.batch_size}, "
        f"Nesterov SGD lr {lr} (warmup {cfg.warmup_epochs:g} epochs, cosine), weight decay {cfg.weight_decay:g}; "
        f"distillation alpha {cfg.alpha:g}, T {cfg.temperature:g}."
    )


def write_markdown(plan: Plan, title: str, body: str) -> str:
    command = f"\n\nCommand: `{plan.command}`" if plan.command else ""
    text = f"# {title}\n\n{summary(plan)}{command}\n\n{body}\n"
    fsutil.write_text_atomic(plan.out / RESULTS_MD, text)
    return text


def plot_sweep(levels: list[dict], path, title: str) -> Path:
    """Top-1 and agreement with the teacher vs noise std, one panel each (top-1 on the data's classes when they are a
    subset of the teacher's: over all of them, rows trained on the data's labels are not comparable with the rest),
    one line per row, as a PLOT_SIZE PNG (Agg canvas, no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = sweep_metrics(levels)
    panels = [k for k in (("top1_subset" if "top1_subset" in metrics else "top1"), "agreement") if k in metrics]
    fig = Figure(figsize=(PLOT_SIZE[0] / 100, PLOT_SIZE[1] / 100), dpi=100)
    FigureCanvasAgg(fig)
    stds = [lvl["noise_std"] for lvl in levels]
    for i, key in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for name in (r["name"] for r in levels[0]["rows"]):
            values = [_value(lvl, name, key) for lvl in levels]
            if any(v is not None for v in values):
                ax.plot(stds, [math.nan if v is None else v for v in values], marker="o", label=name)
        ax.set_xlabel("noise std (Gaussian, on the [0, 1] mosaic)")
        ax.set_ylabel(f"{LABELS[key]} (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    fsutil.write_bytes_atomic(path, buf.getvalue())
    return Path(path)


# ---------------------------------------------------------------- seeds and tuning

# Two-sided 95 % quantiles of Student's t, by degrees of freedom (1..30; beyond that the normal's 1.96 is within 2 %).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131)
_T975 += (2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
PAIRED_METRICS = ("top1", "top1_subset", "agreement", "agreement_top5")


def t975(dof: int) -> float:
    return _T975[dof - 1] if dof <= len(_T975) else 1.96


def mean_interval(values) -> dict:
    """Mean, sample std and the 95 % t-interval of the mean (std and interval need two values or more)."""
    import numpy as np

    v = np.asarray(values, float)
    out = {"mean": round(float(v.mean()), 3), "n": len(v)}
    if len(v) > 1:
        std = float(v.std(ddof=1))
        half = t975(len(v) - 1) * std / math.sqrt(len(v))
        out.update(std=round(std, 3), ci95=[round(float(v.mean()) - half, 3), round(float(v.mean()) + half, 3)])
    return out


def seed_summary(rows: list[dict]) -> dict:
    """Per row, mean +- std over seeds of each metric; the paired differences "distilled - row" for every other row
    and "distilled_gt - gt_labels" (students of one seed share data order and noise, so the per-seed differences are
    paired); and the share of the
    teacher's agreement lost on RAW that the distilled student recovers."""
    by_name: dict = {}
    for r in rows:
        by_name.setdefault(r["name"], {})[r["seed"]] = r
    summary = {"rows": {}, "paired": {}}
    for name, seeds in by_name.items():
        summary["rows"][name] = {
            k: mean_interval([r[k] for r in seeds.values()])
            for k in LABELS
            if all(r.get(k) is not None for r in seeds.values())
        }
    distilled = by_name.get("distilled", {})
    pairs = [("distilled", name) for name in by_name if name != "distilled"]
    pairs += [("distilled_gt", "gt_labels")]  # the ground-truth pair, compared by accuracy
    pairs += [("distilled_kd", "teacher_labels")]  # the label-free pair with alpha read as the KD weight
    for a, b in pairs:
        diff = paired_difference(by_name.get(a, {}), by_name.get(b, {}))
        if diff is not None:
            summary["paired"][f"{a} - {b}"] = diff
    raw = by_name.get("teacher_raw", {})
    common = sorted(set(raw) & set(distilled))
    if common and all(raw[s]["agreement"] < 100 for s in common):
        summary["recovered_agreement"] = mean_interval(
            [100 * (distilled[s]["agreement"] - raw[s]["agreement"]) / (100 - raw[s]["agreement"]) for s in common]
        )
    return summary


def paired_difference(first: dict, second: dict) -> dict | None:
    """{metric: mean_interval of first - second} over the seeds both have ({seed: row} each); None if none."""
    common = sorted(set(first) & set(second))
    if not common:
        return None
    return {
        k: mean_interval([first[s][k] - second[s][k] for s in common])
        for k in PAIRED_METRICS
        if all(first[s].get(k) is not None and second[s].get(k) is not None for s in common)
    }


def input_summary(rows: list[dict]) -> dict:
    """Per student input, its seed_summary; and the paired difference (same seed) of each input's distilled
    student against the first input's."""
    by_input: dict = {}
    for r in rows:
        by_input.setdefault(r["input"], []).append({"seed": None, **r})  # one run without --seeds
    summary = {"inputs": {v: seed_summary(rs) for v, rs in by_input.items()}, "paired": {}}
    first, *others = list(by_input)
    base = {r["seed"]: r for r in by_input[first] if r["name"] == "distilled"}
    for v in others:
        diff = paired_difference({r["seed"]: r for r in by_input[v] if r["name"] == "distilled"}, base)
        if diff is not None:
            summary["paired"][f"distilled ({v}) - distilled ({first})"] = diff
    return summary


def format_inputs(summary: dict) -> str:
    parts = [f"### Student input {v}\n\n{format_seeds(s)}" for v, s in summary["inputs"].items()]
    if summary["paired"]:
        first = next(iter(summary["inputs"]))
        parts.append(f"### Student inputs against {first}\n\n{format_paired(summary['paired'])}")
    return "\n\n".join(parts)


def _pm(stat: dict) -> str:
    if "std" not in stat:
        return f"{stat['mean']:.2f}"
    return f"{stat['mean']:.2f} ± {stat['std']:.2f}"


def format_seeds(summary: dict) -> str:
    rows = summary["rows"]
    metrics = [k for k in LABELS if any(k in v for v in rows.values())]
    n = max((s["n"] for v in rows.values() for s in v.values()), default=0)
    lines = [
        f"Mean ± std over {n} seeds:" if n > 1 else "One seed (no spread):",
        "",
        "| row | " + " | ".join(f"{LABELS[k]} %" for k in metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    for name, stats in rows.items():
        lines.append(f"| {name} | " + " | ".join(_pm(stats[k]) if k in stats else "-" for k in metrics) + " |")
    if summary["paired"]:
        lines += ["", format_paired(summary["paired"])]
    if "recovered_agreement" in summary:
        lines += ["", f"Agreement lost on RAW recovered by distilled: {_pm(summary['recovered_agreement'])} %"]
    return "\n".join(lines)


def format_paired(paired: dict) -> str:
    keys = [k for k in PAIRED_METRICS if any(k in v for v in paired.values())]
    lines = [
        "Paired differences (points; mean [95 % interval] over seeds):",
        "",
        "| difference | " + " | ".join(LABELS[k] for k in keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    for name, stats in paired.items():
        cells = []
        for k in keys:
            s = stats.get(k)
            if s is None:
                cells.append("-")
            elif "ci95" in s:
                cells.append(f"{s['mean']:+.2f} [{s['ci95'][0]:+.2f}, {s['ci95'][1]:+.2f}]")
            else:
                cells.append(f"{s['mean']:+.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def tune_metric(row: Row) -> str:
    """What a row is tuned for: ground-truth rows for accuracy, label-free rows for agreement with the teacher."""
    return "top1" if row.needs_labels else "agreement"


def best_lrs(plan: Plan, rows: list[dict]) -> dict:
    best = {}
    for row in plan.rows:
        metric = tune_metric(row)
        scored = [(r[metric], r["lr"]) for r in rows if r["name"] == row.name and r.get(metric) is not None]
        if scored:
            score, lr = max(scored)
            best[row.name] = {"lr": lr, "metric": metric, "score": score}
    return best


def format_tune(plan: Plan, rows: list[dict]) -> str:
    lrs = sorted({r["lr"] for r in rows})
    best = best_lrs(plan, rows)
    lines = [
        "Score on the held-out training images (ground-truth rows: top-1 %; label-free rows: agreement %):",
        "",
        "| row | metric | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | best |",
        "|---|---|" + "---:|" * (len(lrs) + 1),
    ]
    for row in plan.rows:
        metric = tune_metric(row)
        cells = []
        for lr in lrs:
            r = next((r for r in rows if r["name"] == row.name and r["lr"] == lr), None)
            cells.append("-" if r is None or r.get(metric) is None else f"{r[metric]:.2f}")
        chosen = f"{best[row.name]['lr']:g}" if row.name in best else "-"
        lines.append(f"| {row.name} | {LABELS[metric]} | " + " | ".join(cells) + f" | {chosen} |")
    flag = ",".join(f"{name}={b['lr']:g}" for name, b in best.items())
    lines += ["", f"As a flag: `--row_lrs={flag}`"]
    return "\n".join(lines)
