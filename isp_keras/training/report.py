"""The results of a run: results.json (the contract: rows of name/top1/top5/agreement in percent, config,
wall_seconds), results.md (the settings in a sentence, the command, the tables) and the sweep's plot."""

from __future__ import annotations

import io
import math
from pathlib import Path

from isp_keras import fsutil
from isp_keras.training.plans import Plan
from isp_keras.training.rundir import RESULTS, RESULTS_MD, run_config

PLOT_SIZE = (1100, 480)


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


def write_results(
    plan: Plan, levels: list[dict], wall_seconds: float, extra: dict | None = None, by_level: bool = False
) -> dict:
    """results.json: {"rows": [...]} (flat), or with `by_level` {"<kind>": [{level tag..., "rows"}, ...]} (the
    sweep's {"sweep": [{"noise_std", "rows"}, ...]}), plus config, wall_seconds, the command and the seconds each
    row took."""
    for level in levels:
        check_percentages(level["rows"])
    config = run_config(plan)
    if by_level:
        body = {plan.kind: levels}
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
        + (
            f"starts from `{cfg.student_init}` (the teacher: `{cfg.teacher}`) and trains "
            if cfg.student_init
            else f"starts from the teacher `{cfg.teacher}` and trains "
        )
        + f"{cfg.epochs} epochs{take}, batch {cfg.batch_size}, "
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
