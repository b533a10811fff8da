"""The benchmark's figures as a short table for a person: the headline figures of each suite, and every ratio timed
in interleaved rounds with its middle half (q1-q3). The full set of figures goes to `--json`."""

from __future__ import annotations

# Headline figures besides the timed ratios, in the order shown; a model prefix (`mobilenetv2_224_`,
# `<model>/`) is kept in front of the name.
HEADLINE = (
    "params",
    "keras_top1",
    "int8_top1_agreement",
    "float32_bytes",
    "int8_bytes",
    "keras_latency_ms",
    "float32_latency_ms",
    "int8_latency_ms",
    "raw_path_latency_ms",
    "isp_path_latency_ms",
    "full_size_shape",
    "full_raw_path_latency_ms",
    "full_isp_path_latency_ms",
    "step_ms_plain",
    "step_ms_distill",
)
SPREAD = ("_min", "_q1", "_q3", "_max")


def _show(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def table(figures: dict) -> str:
    """Markdown table `| figure | value | q1-q3 |` of the headline figures and every interleaved ratio."""
    rows = []
    for name, value in figures.items():
        if name.endswith(SPREAD):
            continue
        base = name.rsplit("/", 1)[-1].removeprefix("mobilenetv2_224_")
        timed = f"{name}_q1" in figures and f"{name}_q3" in figures
        if not timed and base not in HEADLINE:
            continue
        spread = f"{_show(figures[f'{name}_q1'])}-{_show(figures[f'{name}_q3'])}" if timed else ""
        rows.append(f"| {name} | {_show(value)} | {spread} |")
    return "\n".join(["| figure | value | q1-q3 |", "|---|---:|---:|", *rows])
