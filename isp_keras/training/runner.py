"""The one experiment runner, used by `train`, `table`, `sweep`, `ablation`, `tune` and `table2`: it runs a plan
(training/plans.py) level by level and row by row, resuming what a stopped run left.

Each row lives in its own sub-directory (row.json once finished, checkpoints, student.weights.h5, TensorBoard logs),
so `tensorboard --logdir <model_dir>` shows the rows side by side, and a rerun skips finished rows and resumes an
interrupted one. The run directory and its guard are training/rundir.py; results.json and results.md,
training/report.py; statistics over seeds and learning rates, training/statistics.py; the dry run,
training/dryrun.py.
"""

from __future__ import annotations

import dataclasses
import time

from isp_keras import fsutil
from isp_keras.data import normalisation, sources
from isp_keras.errors import UserError
from isp_keras.training import experiment, logs
from isp_keras.training.config import DEFAULT_TABLE_ROWS, TrainConfig
from isp_keras.training.plans import Level, Plan, Row, check_ks, check_rows
from isp_keras.training.report import LABELS
from isp_keras.training.rundir import NORM_FILE, ROW_FILE, STUDENT_WEIGHTS, forget_if_empty, prepare_out, read_row


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


def level_setup(plan: Plan, level: Level, state: LevelState):
    """Data and teacher of a level, with the level's saved normalisation (computed and saved the first time)."""
    if state.setup is None:
        norm_path = level.dir / NORM_FILE
        norm = normalisation.load_normalisation(norm_path) if norm_path.exists() else None
        make = plan.make_setup or (lambda lvl, n: experiment.build_setup(lvl.cfg, norm=n))
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
        setup = level_setup(plan, level, state)
        row_dir = level.dir / row.name
        log(f"{row_dir}: {row.describe(level.cfg)}")
        start = time.time()
        steps = setup.steps_per_epoch()
        if row.trains:
            start_model = student_of(setup, level, row.start_from, state.students) if row.start_from else None
            result, student = experiment.train_student(
                setup, row, row_dir, start_from=start_model, step_offset=first_step(row, steps), verbose=plan.verbose
            )
            student.save_weights(row_dir / STUDENT_WEIGHTS)
            experiment.save_student(student, row_dir, setup)  # any row's student can be exported (--student=ROW_DIR)
            state.students[row.name] = student
        else:
            result = experiment.baseline_row(setup, row.name)
        result = {**result, **level.tag}
        spent = round(time.time() - start, 1)
        last_step = max((first_step(r, steps) + r.epochs * steps for r in rows if r.trains), default=1)
        final_step = first_step(row, steps) + row.epochs * steps if row.trains else last_step
        logs.log_test_scalars(row_dir, result, row, final_step)
        finished[row.name] = {"row": result, "seconds": spent}
        fsutil.write_json_atomic(row_dir / ROW_FILE, finished[row.name])
        log(f"{row_dir}: {headline(result)} ({spent:.0f} s)")
    return [finished[r.name]["row"] for r in rows], {r.name: finished[r.name]["seconds"] for r in rows}


def headline(row: dict) -> str:
    return ", ".join(f"{LABELS[k]} {row[k]:.2f}%" for k in LABELS if row.get(k) is not None)


def student_of(setup, level: Level, name: str, trained: dict):
    """The student of row `name` of this level: trained in this process, or its saved final weights."""
    if name in trained:
        return trained[name]
    path = level.dir / name / STUDENT_WEIGHTS
    if not path.exists():
        raise UserError(
            f"{level.dir / name}: finished, but {STUDENT_WEIGHTS} is missing; pass --overwrite to redo the rows"
        )
    student = experiment.build_student(setup, None, sync_bn=False)
    student.load_weights(path)
    trained[name] = student
    return student


def final_student(plan: Plan, level: Level):
    """(setup, the last student row's model) of `level` after `run`: what the train command saves."""
    names = [r.name for r in runnable_rows(plan, level, lambda _: None) if r.trains]
    if not names:
        raise UserError(f"{plan.out}: no student row to save")
    state = plan.states.setdefault(str(level.dir), LevelState())
    setup = level_setup(plan, level, state)
    return setup, student_of(setup, level, names[-1], state.students)
