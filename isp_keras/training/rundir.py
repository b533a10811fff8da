"""The run directory: its file names, the settings recorded in config.json and checked on resume (only RESUMABLE
may differ), starting afresh with --overwrite, and reading a finished row's row.json."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

from isp_keras import fsutil
from isp_keras.config import default_of
from isp_keras.errors import UserError
from isp_keras.training.plans import Plan

CONFIG_FILE = "config.json"
NORM_FILE = "normalisation.json"
ROW_FILE = "row.json"
RESULTS = "results.json"
RESULTS_MD = "results.md"
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


def forget_if_empty(out: Path, fresh: bool) -> None:
    """A run refused before any row started (bad data, say) leaves nothing behind: the directory it created holds
    no file but its config.json, and goes."""
    if fresh and out.is_dir() and [p for p in out.rglob("*") if not p.is_dir()] == [out / CONFIG_FILE]:
        shutil.rmtree(out)


def read_row(row_dir: Path) -> dict | None:
    path = row_dir / ROW_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return None
    return data if isinstance(data, dict) and data.get("row", {}).get("name") == row_dir.name else None


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


PLOT_FILE = "sweep_top1.png"
