"""Smoke test of the training benchmark: every figure is produced, finite and plausible on a tiny setup."""

from __future__ import annotations

import math

from isp_keras import bench_train

NAMES = ("distill_over_plain", "cached_over_plain", "raw_ops_overhead", "input_stall_fraction")


def test_train_suite_smoke(tiny_teacher):
    # MirroredStrategy equality is tested in tests/test_distribute.py; here the child process would only add time.
    cfg = bench_train.BenchConfig(models=("embedded",), steps=2, warmup=1, batch_32=8, pipeline_images=32,
                                  pipeline_seconds=0.2, pipeline_repeats=1, stall_steps=2, stall_shuffle_32=64,
                                  teacher=str(tiny_teacher), progress=False, mirrored=False)
    figures = bench_train.run_suite(cfg)
    for name in NAMES:
        assert name in figures and math.isfinite(figures[name]), (name, figures)
    assert figures["distill_over_plain"] > 0 and figures["cached_over_plain"] > 0
    assert figures["raw_pipeline_us_per_image"] > 0 and figures["rgb_pipeline_us_per_image"] > 0
    assert 0.0 <= figures["input_stall_fraction"] <= 1.0
    assert figures["batch_size"] == 8
