"""Training benchmark: the interleaved timing helper (fake clock: exact ratios, robust to an outlier round), the
config (flags generated from it, validation), and a smoke run: every figure produced, finite, plausible and
consistent on a tiny setup."""

from __future__ import annotations

import dataclasses
import math

import pytest
from absl import flags

from isp_keras import config
from isp_keras.bench import timing
from isp_keras.bench import train as bench_train
from isp_keras.errors import UserError

NAMES = ("distill_over_plain", "cached_over_plain", "raw_ops_overhead", "input_stall_fraction")
RATIOS = ("distill_over_plain", "cached_over_plain", "raw_ops_overhead")


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_interleaved_ratios_median_of_pairs():
    """B costs 1.3x A in every round; a strong drift slows both alike from round to round, and one burst makes B 5x
    slower in round 1. The median of the per-round ratios is exactly 1.3 (a ratio of medians or of means, or a mean
    of ratios would not be); warm-up calls (very slow here) are not timed; the order rotates per round."""
    clock, log = FakeClock(), []
    warmup, block, rounds = 1, 2, 5

    def variant(name, cost):
        def call(i):
            log.append((name, i))
            if i < warmup:
                clock.now += 100.0  # warm-up: slow, must not count
                return
            r = (i - warmup) // block
            drift = 1.0 + r  # both variants alike
            burst = 5.0 if (name == "b" and r == 1) else 1.0
            clock.now += cost * drift * burst

        return call

    t = timing.interleaved_ratios(
        {"a": variant("a", 1.0), "b": variant("b", 1.3)}, rounds, block=block, warmup=warmup, clock=clock
    )
    assert t.rounds == rounds
    assert t.times["a"] == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0])
    assert t.ratios("b", "a") == pytest.approx([1.3, 6.5, 1.3, 1.3, 1.3])
    assert t.ratio("b", "a") == pytest.approx(1.3, abs=1e-12)
    fig = t.ratio_figures("b_over_a", "b", "a")
    assert fig["b_over_a"] == pytest.approx(1.3, abs=1e-12)
    assert fig["b_over_a_min"] == pytest.approx(1.3) and fig["b_over_a_max"] == pytest.approx(6.5)
    assert fig["b_over_a_q1"] == pytest.approx(1.3) and fig["b_over_a_q3"] == pytest.approx(1.3)
    # What a ratio of medians would say here: far off, because the burst moves B's median up a rank.
    assert t.ms("b") / t.ms("a") > 1.7
    assert t.ratio_figures("x", "b", "a", offset=-1.0)["x"] == pytest.approx(0.3, abs=1e-12)
    # Interleaving: warm-up a, b; then blocks of 2 in rotating order a b / b a / a b ...
    names = [name for name, _ in log]
    assert names[:2] == ["a", "b"]
    blocks = [names[k] for k in range(2, len(names), block)]
    assert blocks == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b"]
    assert [i for name, i in log if name == "a"] == list(range(1 + rounds * block))


def test_interleaved_ratios_min_seconds_and_hooks():
    """Blocks last >= min_seconds; before/after hooks run untimed around every block (warm-up included)."""
    clock, events = FakeClock(), []

    def hook(kind, name):
        def f():
            events.append((kind, name))
            clock.now += 50.0  # e.g. building an iterator: not part of the timing

        return f

    def call(cost):
        def f(i):
            clock.now += cost

        return f

    names = ("rgb", "raw")
    t = timing.interleaved_ratios(
        {"rgb": call(0.3), "raw": call(0.4)},
        3,
        block=1,
        warmup=1,
        min_seconds=1.0,
        before={n: hook("before", n) for n in names},
        after={n: hook("after", n) for n in names},
        clock=clock,
    )
    assert t.times["rgb"] == pytest.approx([0.3] * 3) and t.times["raw"] == pytest.approx([0.4] * 3)
    assert t.ratio_figures("raw_ops_overhead", "raw", "rgb", offset=-1.0)["raw_ops_overhead"] == pytest.approx(1 / 3)
    assert len(events) == 2 * 2 * (3 + 1)
    assert all(events[k][0] == "before" and events[k + 1] == ("after", events[k][1]) for k in range(0, len(events), 2))


def test_interleaved_ratios_bad_arguments():
    with pytest.raises(ValueError):
        timing.interleaved_ratios({"a": lambda i: None}, 0)
    with pytest.raises(ValueError):
        timing.interleaved_ratios({}, 1)
    assert timing.split_rounds(20, 2) == (10, 2) and timing.split_rounds(3, 10) == (1, 3)


def test_config_flags_and_validation():
    fv = flags.FlagValues()
    config.define_flags(bench_train.TrainBenchConfig, fv)
    fv(["bench", "--train_models=embedded,resnet18", "--train_steps=4", "--notrain_mirrored"])
    cfg = config.from_flags(bench_train.TrainBenchConfig, fv)
    assert cfg.train_models == ["embedded", "resnet18"] and cfg.train_steps == 4 and cfg.train_mirrored is False
    assert all(f.name.startswith("train_") for f in dataclasses.fields(cfg))
    assert bench_train.TrainBenchConfig().validate() == bench_train.TrainBenchConfig()
    with pytest.raises(UserError, match=r"^--train_steps=0: must be >= 1$"):
        bench_train.TrainBenchConfig(train_steps=0).validate()
    with pytest.raises(UserError, match="--train_models=vgg: unknown vgg"):
        bench_train.run(bench_train.TrainBenchConfig(train_models=["vgg"]))
    with pytest.raises(UserError, match="--train_pipeline_images=16: must be >= the batch size"):
        bench_train.TrainBenchConfig(train_pipeline_images=16).validate()


def test_train_suite_smoke(tiny_teacher):
    # MirroredStrategy equality is tested in tests/test_distribute.py; here the child process would only add time.
    cfg = bench_train.TrainBenchConfig(
        train_models=["embedded"],
        train_steps=3,
        train_block=1,
        train_warmup=1,
        train_batch_32=8,
        train_pipeline_images=32,
        train_pipeline_seconds=0.1,
        train_pipeline_repeats=2,
        train_stall_steps=2,
        train_stall_shuffle_32=64,
        train_teacher=str(tiny_teacher),
        train_progress=False,
        train_mirrored=False,
    )
    figures = bench_train.run(cfg)
    for name in NAMES:
        assert name in figures and math.isfinite(figures[name]), (name, figures)
    assert figures["distill_over_plain"] > 0 and figures["cached_over_plain"] > 0
    assert figures["raw_pipeline_us_per_image"] > 0 and figures["rgb_pipeline_us_per_image"] > 0
    assert 0.0 <= figures["input_stall_fraction"] <= 1.0
    assert figures["batch_size"] == 8
    assert figures["step_rounds"] == 3 and figures["step_block"] == 1
    for name in RATIOS:  # the median ratio within its spread
        lo, q1, q3, hi = (figures[f"{name}_{s}"] for s in ("min", "q1", "q3", "max"))
        assert lo <= q1 <= figures[name] <= q3 <= hi, (name, figures)
    # The ratio of the variants' median times is within the per-round ratios' range too (same timings).
    tol = 1e-4
    for name, num, den in (
        ("distill_over_plain", "distill_step_ms", "plain_step_ms"),
        ("cached_over_plain", "cached_step_ms", "plain_step_ms"),
    ):
        assert figures[f"{name}_min"] - tol <= figures[num] / figures[den] <= figures[f"{name}_max"] + tol
    overhead = figures["raw_pipeline_us_per_image"] / figures["rgb_pipeline_us_per_image"] - 1
    assert figures["raw_ops_overhead_min"] - tol <= overhead <= figures["raw_ops_overhead_max"] + tol
