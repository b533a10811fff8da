"""The class-regime experiment's summary: from each regime's three-seed table (its results.json), the paired margins
of distillation over teacher labels (agreement with the teacher) and over ground-truth labels (top-1), with their
95 % intervals, against the number of classes; a Markdown table, the same as JSON, and a plot. Run from the
repository root, one REGIME=RESULTS_JSON per regime (regimes: imagenette, imagewoof, mini_imagenet, tiny_imagenet),
and any number of REGIME/NOTE=RESULTS_JSON for a control run on a regime's seeds (its rows at another learning rate,
say), a line of its own labelled with NOTE and drawn as a hollow square:
    python tools/class_summary.py docs/results/classes_summary imagewoof=runs/table_classes_imagewoof/results.json \
        "tiny_imagenet/distilled at 3e-4=runs/table_classes_tiny_imagenet_lr3e-4/results.json" ...
writes OUT.md, OUT.json and OUT.png.
"""

import json
import sys
from pathlib import Path

# (label, number of classes, fine-grained): what each regime's data holds (docs/imagenet-setting.md).
REGIMES = {
    "imagenette": ("Imagenette: 10 coarse classes", 10, False),
    "imagewoof": ("Imagewoof: 10 dog breeds", 10, True),
    "mini_imagenet": ("mini-ImageNet: 100 classes", 100, False),
    "tiny_imagenet": ("Tiny-ImageNet: 200 classes", 200, False),
}
# The plot's margin axis (points): wide enough for the paper's +4 and every interval but a collapsed seed's.
YLIM = (-5.0, 6.0)
# (paired difference in the table's seed summary, metric, column title)
MARGINS = (
    ("distilled - teacher_labels", "agreement", "distilled - teacher_labels (agreement)"),
    ("distilled_kd - teacher_labels", "agreement", "distilled_kd - teacher_labels (agreement)"),
    ("distilled_gt - gt_labels", "top1", "distilled_gt - gt_labels (top-1)"),
)


def summarise(results: dict) -> dict:
    """{line (REGIME or REGIME/NOTE): its label, classes, seeds, the rows' means and the margins (mean, ci95)}."""
    out = {}
    for line, path in results.items():
        data = json.loads(Path(path).read_text())
        if "seeds" not in data:
            sys.exit(f"{path}: no summary over seeds (a table run with --seeds=0,1,2 writes one)")
        seeds = data["seeds"]
        regime, _, note = line.partition("/")
        label, classes, fine = REGIMES[regime]
        entry = {
            "label": f"{label} ({note})" if note else label,
            "regime": regime,
            "note": note,
            "classes": classes,
            "fine_grained": fine,
            "seeds": sorted({r["seed"] for r in data["rows"]}),
            "rows": {
                name: {k: stats[k]["mean"] for k in ("top1", "agreement") if k in stats}
                for name, stats in seeds["rows"].items()
            },
            "margins": {},
            "results": str(path),
        }
        for pair, metric, _ in MARGINS:
            stats = seeds["paired"].get(pair, {}).get(metric)
            if stats:
                entry["margins"][pair] = {"metric": metric, "mean": stats["mean"], "ci95": stats["ci95"]}
        out[line] = entry
    return out


def markdown(summary: dict) -> str:
    def cell(entry, pair):
        m = entry["margins"].get(pair)
        if not m:
            return "-"
        lo, hi = m["ci95"]
        mark = " *" if lo > 0 or hi < 0 else ""
        return f"{m['mean']:+.2f} [{lo:+.2f}, {hi:+.2f}]{mark}"

    lines = [
        "| regime | seeds | " + " | ".join(title for _, _, title in MARGINS) + " | teacher_raw / teacher_labels / "
        "distilled agreement % |",
        "|---|---:|" + "---:|" * (len(MARGINS) + 1),
    ]
    for entry in sorted(summary.values(), key=lambda e: (e["classes"], e["fine_grained"], e["note"])):
        rows = entry["rows"]
        means = " / ".join(
            f"{rows[n]['agreement']:.2f}" if n in rows else "-" for n in ("teacher_raw", "teacher_labels", "distilled")
        )
        lines.append(
            f"| {entry['label']} | {len(entry['seeds'])} | "
            + " | ".join(cell(entry, pair) for pair, _, _ in MARGINS)
            + f" | {means} |"
        )
    lines += [
        "",
        "Margins in points, mean over seeds [paired 95 % t-interval]; * the interval excludes zero. The label-free",
        "pair is compared by agreement with the teacher on clean RGB, the ground-truth pair by top-1. Each row trains",
        "at its own tuned learning rate (the regime's table gives them); a line with a note in brackets is a control",
        "run on the same seeds (plotted as hollow squares).",
    ]
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {
        "distilled - teacher_labels": "tab:blue",
        "distilled_kd - teacher_labels": "tab:orange",
        "distilled_gt - gt_labels": "tab:green",
    }
    for i, (pair, colour) in enumerate(colours.items()):
        for entry in summary.values():
            m = entry["margins"].get(pair)
            if not m:
                continue
            # side by side on the log axis, a control just right of its regime's marker
            x = entry["classes"] * (0.9, 1.0, 1.1)[i] * (1.04 if entry["note"] else 1.0)
            lo, hi = m["ci95"]
            ax.errorbar(
                x,
                m["mean"],
                yerr=[[m["mean"] - lo], [hi - m["mean"]]],
                fmt="s" if entry["note"] else "^" if entry["fine_grained"] else "o",
                color=colour,
                capsize=4,
                markersize=6 if entry["note"] else 8,
                markerfacecolor="white" if entry["fine_grained"] or entry["note"] else colour,
            )
            if lo < YLIM[0] or hi > YLIM[1]:  # a collapsed seed's interval would squash the rest: clip and label it
                ax.annotate(
                    f"[{lo:+.1f}, {hi:+.1f}]",
                    (x, m["mean"]),
                    xytext=(6, -3),
                    textcoords="offset points",
                    fontsize=7,
                    color=colour,
                )
    ax.set_ylim(*YLIM)
    ax.axhline(0, color="grey", lw=0.8)
    ax.axhline(4, color="grey", lw=0.8, ls=":")
    ax.text(6.5, 3.75, "the paper's margin (+4)", fontsize=8, color="grey")
    ax.set_xscale("log")
    ax.set_xlim(6, 320)
    ax.set_xticks([10, 100, 200], labels=["10", "100", "200"])
    ax.set_xlabel("classes (triangle: fine-grained, 10 dog breeds; square: a control run at another rate)")
    ax.set_ylabel("margin (points)")
    metric = {"distilled_gt - gt_labels": "top-1"}
    handles = [
        plt.Line2D(
            [], [], color=c, marker="o", ls="", label=f"{p.replace(' - ', ' minus ')} ({metric.get(p, 'agreement')})"
        )
        for p, c in colours.items()
    ]
    ax.legend(handles=handles, fontsize=8, loc="upper center")
    ax.set_title("Distillation vs label training, fast arm, 3 seeds (95 % intervals)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(out: str, pairs: list[str]) -> None:
    results = dict(pair.split("=", 1) for pair in pairs)
    unknown = sorted({line.partition("/")[0] for line in results} - set(REGIMES))
    if unknown:
        sys.exit(f"unknown regime(s) {unknown}: one of {sorted(REGIMES)}")
    summary = summarise(results)
    Path(f"{out}.json").write_text(json.dumps(summary, indent=2) + "\n")
    Path(f"{out}.md").write_text(markdown(summary))
    plot(summary, Path(f"{out}.png"))
    print(markdown(summary))


if __name__ == "__main__":
    if len(sys.argv) < 3 or any("=" not in a for a in sys.argv[2:]):
        sys.exit(__doc__)  # the usage
    main(sys.argv[1], sys.argv[2:])
