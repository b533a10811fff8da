"""The students-cheaper-than-the-teacher frontier from tools/frontier.sh's runs: per student (each MobileNetV1 file
and MobileNetV2 itself), its agreement with the MobileNetV2 teacher on clean RGB when it classifies RAW (distilled
from MobileNetV2, or from its own RGB self), the same network's agreement on clean RGB and on RAW untrained, its
top-1 over the 10 classes, and the deploy benchmark's int8 latency and size and the RAW path's speed-up over LibRaw
+ MobileNetV2 at 224 px. Run from the repository root:
    python tools/frontier.py docs/results/frontier_mobilenetv2 runs/frontier
writes OUT.md, OUT.json and OUT.png (agreement against RAW-path latency, one point per student).
"""

import json
import sys
from pathlib import Path

# (run folder, label, input size): the students tools/frontier.sh trains, smallest first.
STUDENTS = (
    ("mobilenet_v1_0.25_128", "MobileNetV1 x0.25", 128),
    ("mobilenet_v1_0.5_160", "MobileNetV1 x0.5", 160),
    ("mobilenet_v1_0.75_192", "MobileNetV1 x0.75", 192),
    ("mobilenet_v2_1.0_224", "MobileNetV2 (the teacher's own)", 224),
)
COMMAND = "bash tools/frontier.sh"


def _rows(path: Path) -> dict:
    if not path.is_file():
        return {}
    return {r["name"]: r for r in json.loads(path.read_text())["rows"]}


def collect(runs: Path) -> list:
    """One entry per student whose MobileNetV2-distilled table and benchmark exist."""
    out = []
    for folder, label, size in STUDENTS:
        d = runs / folder
        taught = _rows(d / "from_mobilenetv2" / "results.json")
        bench_path = d / "bench.json"
        if "distilled" not in taught or not bench_path.is_file():
            continue
        bench = json.loads(bench_path.read_text())
        own = "student_clean" not in taught  # MobileNetV2 itself: the student is the teacher's clone
        judged = _rows(d / "self_judged" / "results.json")
        entry = {
            "student": label,
            "input_px": size,
            "params": bench["params"],
            "raw_distilled_from_mobilenetv2": taught["distilled"]["agreement"],
            "raw_distilled_from_itself": taught["distilled"]["agreement"]
            if own
            else judged.get("student_raw", {}).get("agreement"),
            "clean_untrained": 100.0 if own else taught["student_clean"]["agreement"],
            "raw_untrained": taught["teacher_raw" if own else "student_raw"]["agreement"],
            "top1_10_classes": taught["distilled"].get("top1_subset"),
            "int8_agreement_with_float": bench.get("int8_top1_agreement"),
            "int8_latency_ms": bench["int8_latency_ms"],
            "int8_kb": bench["int8_bytes"] / 1024,
            "raw_path_ms": bench["raw_path_latency_ms"],
            "isp_path_ms": bench["isp_path_latency_ms"],
            "speedup": bench["raw_path_speedup_over_isp_path"],
            "speedup_q1": bench["raw_path_speedup_over_isp_path_q1"],
        }
        entry["beats_its_clean_self"] = entry["raw_distilled_from_mobilenetv2"] > entry["clean_untrained"]
        entry["target"] = entry["beats_its_clean_self"] and entry["speedup"] >= 8 and entry["speedup_q1"] >= 8
        out.append(entry)
    return out


def markdown(entries: list) -> str:
    def pct(v):
        return "-" if v is None else f"{v:.2f}"

    lines = [
        "| student | px | params | RAW, distilled from MobileNetV2 | RAW, distilled from itself | "
        "clean RGB, untrained | RAW, untrained | top-1 (10 classes) | int8 vs float | int8 ms | int8 KB | "
        "RAW path ms | ISP path ms | speed-up median [q1] |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in entries:
        lines.append(
            f"| {e['student']} | {e['input_px']} | {e['params'] / 1e6:.2f} M | "
            f"{pct(e['raw_distilled_from_mobilenetv2'])} | {pct(e['raw_distilled_from_itself'])} | "
            f"{pct(e['clean_untrained'])} | {pct(e['raw_untrained'])} | {pct(e['top1_10_classes'])} | "
            f"{pct(e['int8_agreement_with_float'])} | {e['int8_latency_ms']:.2f} | {e['int8_kb']:.0f} | "
            f"{e['raw_path_ms']:.2f} | {e['isp_path_ms']:.2f} | {e['speedup']:.2f} [{e['speedup_q1']:.2f}] |"
        )
    lines += [
        "",
        "Agreement columns: % of the 3,925 Imagenette validation images on which the row's top-1 equals the",
        "MobileNetV2 teacher's on clean RGB at 224 px. RAW: the noisy mosaic (0.1) of the same crop at the student's",
        "own input size; clean RGB, untrained: the off-the-shelf file on the clean crop at its size. Speed-up: the",
        "deploy benchmark's RAW path (DNG of the student's size -> LibRaw decode -> float32 student) against the",
        "ISP path (DNG of 224 px -> LibRaw decode + rendering -> MobileNetV2), timed interleaved, single images, on",
        "2 threads.",
        f"Command: `{COMMAND}`.",
    ]
    return "\n".join(lines) + "\n"


def plot(entries: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for e in entries:
        ax.plot(e["raw_path_ms"], e["raw_distilled_from_mobilenetv2"], "o", color="tab:blue", markersize=8)
        ax.plot(e["raw_path_ms"], e["clean_untrained"], "s", color="tab:grey", markerfacecolor="white", markersize=7)
        if e["raw_distilled_from_itself"] is not None:
            ax.plot(e["raw_path_ms"], e["raw_distilled_from_itself"], "^", color="tab:orange", markersize=7)
        ax.annotate(
            e["student"],
            (e["raw_path_ms"], e["raw_distilled_from_mobilenetv2"]),
            fontsize=7,
            xytext=(4, -10),
            textcoords="offset points",
        )
    isp = sum(e["isp_path_ms"] for e in entries) / len(entries)  # each benchmark times the ISP path anew
    low, high = ax.get_ylim()[0] + 1, ax.get_ylim()[1] - 2
    ax.axvline(isp, color="grey", lw=0.8, ls=":")
    ax.text(isp, high, "ISP path (LibRaw + MobileNetV2) ", fontsize=7, color="grey", ha="right")
    ax.axvline(isp / 8, color="tab:green", lw=0.8, ls=":")
    ax.text(isp / 8, low, " 8x faster than the ISP path", fontsize=7, color="tab:green")
    ax.set_xscale("log")
    ticks = [t for t in (0.5, 1, 2, 5, 10, 20, 50) if min(e["raw_path_ms"] for e in entries) / 2 <= t <= isp * 1.5]
    ax.set_xticks(ticks, labels=[f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("RAW path latency per image, ms (log)")
    ax.set_ylabel("agreement with MobileNetV2 on clean RGB, %")
    ax.legend(
        handles=[
            plt.Line2D([], [], marker="o", ls="", color="tab:blue", label="RAW, distilled from MobileNetV2"),
            plt.Line2D([], [], marker="^", ls="", color="tab:orange", label="RAW, distilled from itself"),
            plt.Line2D(
                [], [], marker="s", ls="", color="tab:grey", markerfacecolor="white", label="clean RGB, untrained"
            ),
        ],
        fontsize=8,
        loc="lower right",
    )
    ax.set_title("Students cheaper than the teacher (Imagenette, noise 0.1)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list) -> None:
    if len(argv) != 3:
        sys.exit(__doc__)
    out, runs = Path(argv[1]), Path(argv[2])
    entries = collect(runs)
    if not entries:
        sys.exit(f"{runs}: no student has both its MobileNetV2-distilled table and its bench.json yet")
    out.with_suffix(".json").write_text(json.dumps({"command": COMMAND, "students": entries}, indent=1) + "\n")
    out.with_suffix(".md").write_text("# Students cheaper than the teacher: the frontier\n\n" + markdown(entries))
    plot(entries, out.with_suffix(".png"))
    print(markdown(entries))


if __name__ == "__main__":
    main(sys.argv)
