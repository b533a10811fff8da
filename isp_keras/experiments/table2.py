"""Table 2 of the paper (the HDR+ protocol) as one command: real RAW in, agreement with the teacher on the camera's
processed RGB out.

  python -m isp_keras.experiments.table2 --flagfile=flags/hdrplus_resnet18.flags
  python -m isp_keras.experiments.table2 --flagfile=flags/hdrplus_embedded.flags   # synthetic bursts, CPU-sized

For each RAW input (`merged`: the burst's merged DNG; `short`: its reference short-exposure frame) the pairs are cut
into aligned patches and labelled by the teacher on the final RGB patch (isp_keras.pairs, cached). Rows, per input:
teacher_raw (the teacher on the RAW input, no training), teacher_labels (student, CE on the teacher's argmax,
alpha=1) and distilled (alpha and T from the flags, hard labels = teacher argmax). There are no ground-truth labels:
top-1 is the top-1 agreement with the teacher, top-5 whether the teacher's class is in the student's top 5, on the
test patches the teacher is confident about. Writes <model_dir>/results.json (rows carry "raw": merged|short) and
results.md; with --synthesize_bursts=N a missing hdrplus:DIR is first filled with N synthetic bursts made from
the embedded test images, which the teacher never saw (pairs.synthesize_bursts).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from absl import app, flags, logging

from isp_keras import config, datasets, distiller, experiment, flagdefs, fsutil, models, pairs
from isp_keras.errors import UserError, run_main

FLAGS = flags.FLAGS


@dataclasses.dataclass
class Table2Options:
    pairs: str
    modes: list
    patch_size: int
    min_teacher_prob: float
    test_fraction: float
    cache_dir: str
    max_patches_per_pair: int = 0
    synthesize_bursts: int = 0
    burst_tiles: int = 2
    burst_frames: int = 3
    short_exposure: float = 0.25


@dataclasses.dataclass
class PairsSetup(experiment.Setup):
    """experiment.Setup whose batches come from a patch cache instead of an RGB source."""

    cache: str = ""

    def _batches(self, split, batch_size, training, start_step=0):
        return pairs.batches(self.cache, split, batch_size=batch_size, cfa=self.cfg.cfa, norm=self.norm,
                             training=training, seed=self.cfg.seed, start_step=start_step)

    def train_ds(self, start_step: int = 0):
        return self._batches("train", self.pipeline.batch_size, True, start_step)

    def test_ds(self):
        return self._batches("test", max(self.pipeline.batch_size, 256), False)

    def steps_per_epoch(self) -> int:
        n = self.source.counts["train"]
        if n < self.pipeline.batch_size:
            raise UserError(f"{self.cache}: {n} training patches, fewer than one batch of {self.pipeline.batch_size}")
        return n // self.pipeline.batch_size


def maybe_synthesize(opts: Table2Options, cfg: config.TrainConfig) -> None:
    kind, _, root = opts.pairs.partition(":")
    if opts.synthesize_bursts <= 0 or kind != "hdrplus" or Path(root).exists():
        return
    if cfg.dataset != "embedded":
        raise UserError(f"--synthesize_bursts: only from --dataset=embedded (got {cfg.dataset})")
    per = opts.burst_tiles ** 2
    # The test images: like HDR+ scenes for an ImageNet teacher, none was seen while training the teacher.
    images, labels = pairs.embedded_images("test", opts.synthesize_bursts * per)
    n = pairs.synthesize_bursts(root, images, labels, tiles=opts.burst_tiles, frames=opts.burst_frames,
                                short_exposure=opts.short_exposure, cfa=cfg.cfa, seed=cfg.seed)
    logging.info("wrote %d synthetic bursts to %s", n, root)


def mode_setup(opts: Table2Options, cfg: config.TrainConfig, teacher, spec, mode: str) -> PairsSetup:
    build = pairs.BuildConfig(pairs=opts.pairs, out=str(Path(opts.cache_dir) / mode), mode=mode, cfa=cfg.cfa,
                              patch_size=opts.patch_size, test_fraction=opts.test_fraction, seed=cfg.seed,
                              min_teacher_prob=opts.min_teacher_prob, strict=cfg.strict,
                              max_patches_per_pair=opts.max_patches_per_pair)
    index = pairs.build_cache(build, teacher, spec, cfg.teacher)
    stats = index["raw_stats"]
    norm = datasets.Normalisation(stats["mean"], stats["std"], list(spec.rgb_mean), list(spec.rgb_std),
                                  spec.channel_order)
    counts = {s: v["count"] for s, v in index["splits"].items()}
    source = datasets.Source(f"pairs:{build.out}", index["classes"], counts, opts.patch_size,
                             lambda split: pairs.dataset(build.out, split), "train", "test")
    pipeline = datasets.PipelineConfig(image_size=opts.patch_size, batch_size=cfg.batch_size, cfa=cfg.cfa,
                                       noise_std=0.0, seed=cfg.seed)
    return PairsSetup(cfg, source, teacher, spec, norm, pipeline, cache=build.out)


def run(opts: Table2Options, cfg: config.TrainConfig, command: str = "") -> dict:
    start = time.time()
    run_dir = experiment.prepare_run_dir(cfg.model_dir, cfg.overwrite)
    teacher, spec = models.load_teacher(cfg.teacher)
    if spec is None:
        raise UserError(f"--teacher={cfg.teacher}: needs its sidecar JSON (RGB normalisation) to label the RGB patches")
    pairs.check_patch_size(teacher, opts.patch_size, cfg.teacher)
    models.freeze(teacher)
    maybe_synthesize(opts, cfg)
    rows, caches = [], {}
    for mode in opts.modes:
        s = mode_setup(opts, cfg, teacher, spec, mode)
        caches[mode] = {"dir": s.cache, "counts": s.source.counts}
        metrics = distiller.evaluate(s.test_ds(), teacher, teacher, on="student")
        rows.append({**row_of("teacher_raw", metrics), "raw": mode})
        for name, alpha in (("teacher_labels", 1.0), ("distilled", cfg.alpha)):
            row, _ = experiment.train_student(s, run_dir / mode / name, name, alpha, "teacher")
            rows.append({**row, "raw": mode})
        print(f"\n{mode} RAW ({s.source.counts['train']} train / {s.source.counts['test']} test patches)")
        print(experiment.format_table([r for r in rows if r["raw"] == mode]))
    results = experiment.write_results(run_dir, rows, cfg, time.time() - start,
                                       extra={"experiment": "table2", "command": command,
                                              "table2": dataclasses.asdict(opts), "caches": caches})
    fsutil.write_text_atomic(run_dir / "results.md", markdown(rows, command))
    print(f"wrote {run_dir / experiment.RESULTS} and {run_dir / 'results.md'}")
    return results


def row_of(name: str, metrics: dict) -> dict:
    return {"name": name, "top1": round(float(metrics["top1"]), 3), "top5": round(float(metrics["top5"]), 3),
            "agreement": round(float(metrics["agreement"]), 3)}


def markdown(rows: list[dict], command: str) -> str:
    lines = ["# Table 2: agreement with the teacher on the processed RGB", "", f"`{command}`", "",
             "| RAW input | row | top-1 agreement % | top-5 agreement % |", "|---|---|---:|---:|"]
    lines += [f"| {r['raw']} | {r['name']} | {r['top1']:.2f} | {r['top5']:.2f} |" for r in rows]
    return "\n".join(lines) + "\n"


def define_flags(flag_values: flags.FlagValues | None = None) -> None:
    """The shared training flags plus Table 2's own, in `flag_values` (default: the global FLAGS)."""
    flagdefs.define_train_flags(flag_values)
    fv = dict(flag_values=flag_values if flag_values is not None else FLAGS)
    flags.DEFINE_string("pairs", None, "csv:FILE (header raw,rgb,group) or hdrplus:DIR (see isp_keras/pairs.py).", **fv)
    flags.DEFINE_list("modes", ["merged", "short"], "RAW inputs: merged and/or short (the burst's reference frame).",
                      **fv)
    flags.DEFINE_integer("patch_size", 256, "Side of the aligned non-overlapping patches (even).", **fv)
    flags.DEFINE_float("min_teacher_prob", 0.8, "Test patches kept only if the teacher's top probability exceeds this.",
                       **fv)
    flags.DEFINE_float("test_fraction", 0.2, "Fraction of groups (bursts) in the test split.", **fv)
    flags.DEFINE_integer("max_patches_per_pair", 0, "0: every patch; else a seeded sample of this many per pair "
                         "(keeps a full-resolution HDR+ cache to a manageable size).", **fv)
    flags.DEFINE_string("cache_dir", None, "Patch caches (default: <model_dir>/cache/<mode>).", **fv)
    flags.DEFINE_integer("synthesize_bursts", 0, "If > 0 and hdrplus:DIR is missing, write this many synthetic "
                         "bursts there first (from the embedded test images, unseen by the teacher).", **fv)
    flags.DEFINE_integer("burst_tiles", 2, "Synthetic bursts: images per frame side (frame = tiles x image size).",
                         **fv)
    flags.DEFINE_integer("burst_frames", 3, "Synthetic bursts: payload frames (merged noise = 1/frames).", **fv)
    flags.DEFINE_float("short_exposure", 0.25, "Synthetic bursts: exposure of the payload frames.", **fv)


def options_from_flags(fv) -> tuple[Table2Options, config.TrainConfig]:
    if not fv.pairs:
        raise UserError("--pairs: required (csv:FILE or hdrplus:DIR)")
    cfg = config.from_flags(fv)
    if not cfg.model_dir:
        cfg.model_dir = str(Path("runs") / f"table2-{Path(fv.pairs.partition(':')[2]).name}-seed{cfg.seed}")
    modes = list(dict.fromkeys(fv.modes))
    if not modes or any(m not in pairs.MODES for m in modes):
        raise UserError(f"--modes={','.join(fv.modes)}: each must be one of {', '.join(pairs.MODES)}")
    opts = Table2Options(fv.pairs, modes, fv.patch_size, fv.min_teacher_prob, fv.test_fraction,
                         fv.cache_dir or str(Path(cfg.model_dir) / "cache"), fv.max_patches_per_pair,
                         fv.synthesize_bursts, fv.burst_tiles, fv.burst_frames, fv.short_exposure)
    if opts.patch_size < 2 or opts.patch_size % 2:
        raise UserError(f"--patch_size={opts.patch_size}: must be even (the Bayer pattern tiles 2x2)")
    if opts.burst_tiles < 1 or opts.burst_frames < 1 or not 0 < opts.short_exposure <= 1:
        raise UserError("--burst_tiles and --burst_frames must be >= 1 and --short_exposure in (0, 1]")
    return opts, cfg


def main(argv):
    command = " ".join(["python -m isp_keras.experiments.table2"] + sys.argv[1:])
    del argv
    opts, cfg = options_from_flags(FLAGS)
    run(opts, cfg, command)


if __name__ == "__main__":
    define_flags()
    app.run(run_main(main))
