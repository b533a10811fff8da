"""bench_deploy: a tiny smoke run (few calls, no MobileNetV2) gives every figure the issue names, consistently."""

from __future__ import annotations

import math

import pytest
from absl import flags

from isp_keras import bench_deploy
from isp_keras.errors import UserError


def parse(argv):
    fv = flags.FlagValues()
    bench_deploy.define_flags(fv)
    fv(["bench", *argv])
    return fv


def test_smoke(tiny_student):
    fig = bench_deploy.run(parse([f"--student={tiny_student}", "--runs=3", "--warmup=1", "--agreement_take=32",
                                  "--calibration_samples=16", "--e2e_images=2", "--nomobilenet"]))
    for name in ("keras", "float32", "dynamic", "int8", "raw_path", "isp_path"):
        assert fig[f"{name}_latency_ms"] > 0
    assert fig["int8_over_float32_latency"] == pytest.approx(fig["int8_latency_ms"] / fig["float32_latency_ms"],
                                                             rel=1e-3, abs=1e-3)
    assert fig["raw_path_speedup_over_isp_path"] == pytest.approx(
        fig["isp_path_latency_ms"] / fig["raw_path_latency_ms"], rel=1e-3, abs=1e-3)
    assert 0 <= fig["int8_top1_agreement"] <= 100 and fig["float32_top1_agreement"] == 100.0
    assert fig["agreement_examples"] == 32 and fig["e2e_images"] == 2
    assert fig["int8_bytes"] < fig["float32_bytes"] and fig["keras_bytes"] > 0
    assert all(not (isinstance(v, float) and math.isnan(v)) for v in fig.values())


def test_bad_flags(tmp_path):
    with pytest.raises(UserError, match="--runs=0: must be >= 1"):
        bench_deploy.run(parse(["--runs=0"]))
    with pytest.raises(UserError, match="no such file or run directory"):
        bench_deploy.run(parse([f"--student={tmp_path / 'missing'}"]))
