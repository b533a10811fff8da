"""Statistics over seeds and learning rates: mean, std and 95 % t-intervals, the paired differences of rows that
share a seed, the side-by-side student inputs, and the learning rate each row is tuned to."""

from __future__ import annotations

import math

from isp_keras.training.plans import Plan, Row
from isp_keras.training.report import LABELS

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
    seeded = any("ci95" in s for v in paired.values() for s in v.values())
    head = "Paired differences (points; mean [95 % interval] over seeds):"
    lines = [
        head if seeded else "Differences (points; one seed):",
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
