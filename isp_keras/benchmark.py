"""Benchmarks (not tests): `python -m isp_keras.benchmark --suite=deploy|train --json=PATH`.

deploy: latency and size of a trained student (default runs/train) as float32/int8 TFLite, int8 agreement, and the
RAW path (mosaic -> student) against the ISP path (LibRaw -> RGB -> teacher). train: step-time ratios of
distillation, cached logits, the RAW ops and MirroredStrategy. Compared variants are timed interleaved and every
ratio is the median of per-round ratios (with its spread). Prints the headline figures and the ratios as a short
table; `--json` writes every figure as JSON {name: value}.
"""

from __future__ import annotations

import dataclasses

from isp_keras import cli
from isp_keras.bench.deploy import DeployBenchConfig
from isp_keras.bench.train import TrainBenchConfig
from isp_keras.config import option


@dataclasses.dataclass
class BenchmarkConfig(TrainBenchConfig, DeployBenchConfig):
    suite: str = option("deploy", "Which benchmark suite.", choices=("deploy", "train"))
    json: str = option("", "Write every figure as JSON {name: value} to this path (the printed table is a summary).")


def run(cfg: BenchmarkConfig) -> dict:
    from isp_keras import fsutil
    from isp_keras.bench import report

    if cfg.suite == "deploy":
        from isp_keras.bench import deploy as suite
    else:
        from isp_keras.bench import train as suite
    figures = suite.run(cfg)
    print(report.table(figures))
    if cfg.json:
        fsutil.write_json_atomic(cfg.json, figures)
        print(f"all {len(figures)} figures: {cfg.json}")
    else:
        print(f"({len(figures)} figures in all: --json=PATH writes them)")
    return figures


if __name__ == "__main__":
    cli.main(BenchmarkConfig, run)
