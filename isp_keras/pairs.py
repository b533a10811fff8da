"""Build a RAW/RGB patch cache from pairs: `python -m isp_keras.pairs --pairs=csv:FILE|hdrplus:DIR|raw:DIR --out=DIR`.

Aligned non-overlapping patches of each pair, split by group (burst), labelled by the teacher on the RGB patch
(test patches kept only where it is confident); see isp_keras/data/pairs.py for the layouts.
"""

from __future__ import annotations

from pathlib import Path

from isp_keras import cli
from isp_keras.data.config import PairsConfig


def run(cfg: PairsConfig) -> dict:
    from isp_keras.data import pair_cache, synthetic_bursts
    from isp_keras.errors import UserError
    from isp_keras.models import teachers

    kind, _, root = cfg.pairs.partition(":")
    if cfg.synthesize_bursts > 0 and kind == "hdrplus" and not Path(root).exists():
        images, labels = synthetic_bursts.embedded_images("test", cfg.synthesize_bursts * 4)
        synthetic_bursts.synthesize_bursts(root, images, labels, tiles=2, cfa=cfg.cfa, seed=cfg.seed)
    teacher, spec = teachers.load_teacher(cfg.teacher)
    if spec is None:
        raise UserError(f"--teacher={cfg.teacher}: needs its sidecar JSON (RGB normalisation) to label RGB patches")
    build = pair_cache.BuildConfig.of(cfg, cfg.out, cfg.mode)
    index = pair_cache.build_cache(build, teachers.freeze(teacher), spec, cfg.teacher)
    summary = {k: index[k] for k in ("pairs", "pairs_read", "test_dropped_low_prob")}
    summary.update(skipped=index["skipped"]["count"], **{s: v["count"] for s, v in index["splits"].items()})
    print(f"{cfg.out}: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    return index


if __name__ == "__main__":
    cli.main(PairsConfig, run)
