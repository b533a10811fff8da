"""bench.report: the benchmark's short table: headline figures and every interleaved ratio with its q1-q3."""

from __future__ import annotations

from isp_keras.bench import report


def test_table_holds_the_headline_figures_and_ratios_only():
    figures = {
        "student": "runs/train/student.keras",
        "params": 272_474,
        "int8_top1_agreement": 98.41,
        "int8_latency_ms": 0.084,
        "float32_max_abs_prob_diff": 1e-6,
        "int8_over_float32_latency": 0.38,
        "int8_over_float32_latency_min": 0.3,
        "int8_over_float32_latency_q1": 0.35,
        "int8_over_float32_latency_q3": 0.41,
        "int8_over_float32_latency_max": 0.5,
        "mobilenetv2_224_int8_latency_ms": 8.3521,
        "resnet18/distill_over_plain": 1.25,
        "resnet18/distill_over_plain_q1": 1.2,
        "resnet18/distill_over_plain_q3": 1.3,
    }
    assert report.table(figures).splitlines() == [
        "| figure | value | q1-q3 |",
        "|---|---:|---:|",
        "| params | 272,474 |  |",
        "| int8_top1_agreement | 98.41 |  |",
        "| int8_latency_ms | 0.084 |  |",
        "| int8_over_float32_latency | 0.38 | 0.35-0.41 |",
        "| mobilenetv2_224_int8_latency_ms | 8.352 |  |",
        "| resnet18/distill_over_plain | 1.25 | 1.2-1.3 |",
    ]
