"""The paper's experiments and the main training command as plans of rows, run by `runner`.

train     teacher_clean, teacher_raw, distilled, distilled_qat (--qat_epochs); saves the final student
table     Table 1: the teacher baselines and students trained with GT labels, teacher labels, distillation
sweep     Fig. 2: the Table 1 rows at each noise std, and a plot of top-1 and agreement vs noise std
ablation  Table 3: distil into only the first k stages/blocks, the rest frozen
tune      the student rows at several learning rates, scored on held-out training data
table2    Table 2: real (or synthetic) RAW/RGB pairs, agreement with the teacher (see pairs_setup)
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from isp_keras import console, paths
from isp_keras.errors import UserError
from isp_keras.training import dryrun, logs, plans, report, rundir, runner, statistics
from isp_keras.training.config import AblationConfig, SweepConfig, Table2Config, TableConfig, TrainConfig, TuneConfig


def with_run_dir(cfg, kind: str):
    if not cfg.model_dir:
        cfg = dataclasses.replace(cfg, model_dir=paths.default_run_dir(kind))
    return cfg


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One command's experiment, handed to the runner as a plan: its rows and levels from its config, what it adds
    to results.json, and how its results.md reads. Subclasses change only what differs."""

    name: str
    title: str
    by_level: bool = False  # results.json lists the rows per level ({"sweep": [...]}) instead of flat

    def rows(self, cfg) -> list:
        return plans.table_rows(cfg, cfg.rows)

    def levels(self, cfg) -> list:
        return plans.single_level(cfg)

    def plan(self, cfg, command: str = "", verbose: int | str = "auto") -> plans.Plan:
        cfg = with_run_dir(cfg, self.name)
        return plans.Plan(self.name, cfg, self.rows(cfg), self.levels(cfg), command=command, verbose=verbose)

    def summaries(self, plan: plans.Plan, rows: list[dict]) -> dict:
        """What results.json holds beside the rows."""
        return {}

    def body(self, plan: plans.Plan, results: dict, levels: list[dict]) -> str:
        """results.md below the settings: the tables."""
        return report.format_table(results["rows"])


class Train(Experiment):
    def rows(self, cfg) -> list:
        return plans.train_rows(cfg)


class Table(Experiment):
    def levels(self, cfg) -> list:
        levels = plans.single_level(cfg)
        if cfg.student_inputs:
            levels = plans.input_levels(levels, cfg.student_inputs)
        return plans.seed_levels(levels, cfg.seeds)

    def summaries(self, plan, rows) -> dict:
        if plan.cfg.student_inputs:
            return {"inputs": statistics.input_summary(rows)}
        if plan.cfg.seeds:
            return {"seeds": statistics.seed_summary(rows)}
        return {}

    def body(self, plan, results, levels) -> str:
        per_run = report.format_table(results["rows"])
        if "inputs" in results:
            return statistics.format_inputs(results["inputs"]) + "\n\nPer run:\n\n" + per_run
        if "seeds" in results:
            return statistics.format_seeds(results["seeds"]) + "\n\nPer seed:\n\n" + per_run
        return per_run


class Sweep(Experiment):
    def levels(self, cfg) -> list:
        return plans.noise_levels(cfg, cfg.noise_stds)

    def summaries(self, plan, rows) -> dict:
        return {"plot": rundir.PLOT_FILE}

    def body(self, plan, results, levels) -> str:
        cfg = plan.cfg
        title = f"{cfg.dataset}, CFA {cfg.cfa}, {cfg.epochs} epochs per student, seed {cfg.seed}"
        plot = report.plot_sweep(levels, plan.out / rundir.PLOT_FILE, title)
        return f"Plot: {plot.name}\n\n{report.format_sweep(levels)}"


class Ablation(Experiment):
    def rows(self, cfg) -> list:
        return plans.ablation_rows(cfg, cfg.finetune_ks)

    def summaries(self, plan, rows) -> dict:
        return {"finetune_ks": list(plan.cfg.finetune_ks)}


class Tune(Experiment):
    def levels(self, cfg) -> list:
        return plans.lr_levels(cfg, cfg.lrs, cfg.rows)

    def summaries(self, plan, rows) -> dict:
        return {"best": statistics.best_lrs(plan, rows)}

    def body(self, plan, results, levels) -> str:
        return statistics.format_tune(plan, results["rows"])


class Table2(Experiment):
    """Its plan comes from table2(): rows and levels per RAW mode, data from the pairs' patch caches."""


EXPERIMENTS = {
    e.name: e
    for e in (
        Train("train", "ISP distillation of one student"),
        Table("table", "Table 1: teacher baselines and RAW students"),
        Sweep("sweep", "Noise sweep: top-1 and agreement vs noise std", by_level=True),
        Ablation("ablation", "Ablation: fine-tune only the first k stages/blocks"),
        Tune("tune", "Learning rates of the student rows, scored on held-out training data"),
        Table2("table2", "Table 2: agreement with the teacher on the processed RGB"),
    )
}


def plan_for(kind: str, cfg: TrainConfig, command: str = "", verbose: int | str = "auto") -> plans.Plan:
    """The rows and levels of a command, from its config."""
    return EXPERIMENTS[kind].plan(cfg, command, verbose)


def finish(plan: plans.Plan, levels: list[dict], seconds: dict, start: float, extra: dict | None = None) -> dict:
    """results.json and results.md of a finished plan, and the table on stdout."""
    experiment = EXPERIMENTS[plan.kind]
    extra = {"row_seconds": seconds, **(extra or {})}
    results = report.write_results(plan, levels, time.time() - start, extra, by_level=experiment.by_level)
    print(report.write_markdown(plan, experiment.title, experiment.body(plan, results, levels)))
    print(f"wrote {plan.out / rundir.RESULTS} and {plan.out / rundir.RESULTS_MD} ({results['wall_seconds']:.0f} s)")
    return results


def train(cfg: TrainConfig, command: str = "") -> dict:
    """The main command: baselines, the distilled student (and its quantisation-aware fine-tuning), and the saved
    student (student.keras + student.json) that export reads."""
    from isp_keras.training import experiment

    start = time.time()
    plan = plan_for("train", cfg, command)
    levels, seconds = runner.run(plan)
    setup, student = runner.final_student(plan, plan.levels[0])
    logs.log_image_panel(plan.out, setup)
    experiment.save_student(student, plan.out, setup)
    return finish(plan, levels, seconds, start)


def table(cfg: TableConfig | SweepConfig | AblationConfig | TuneConfig, kind: str, command: str = "") -> dict:
    """table, sweep, ablation or tune: the plan (printed with --dry_run) or its results."""
    experiment = EXPERIMENTS[kind]
    plan = experiment.plan(cfg, command)
    if cfg.dry_run:
        text = dryrun.plan_text(plan)
        print(text)
        return {"plan": text}
    start = time.time()
    levels, seconds = runner.run(plan)
    rows = [row for level in levels for row in level["rows"]]
    return finish(plan, levels, seconds, start, experiment.summaries(plan, rows))


# ---------------------------------------------------------------- Table 2: RAW/RGB pairs


def table2(cfg: Table2Config, command: str = "") -> dict:
    """For each RAW input (`merged`: the burst's merged DNG; `short`: its reference short-exposure frame) the
    pairs are cut into aligned patches, labelled by the teacher on the RGB patch (data.pairs, cached). Rows per
    input: teacher_raw, teacher_labels (CE on the teacher's argmax) and distilled (hard labels = teacher argmax).
    No ground truth: top-1 is the agreement with the teacher on test patches it is confident about."""
    from isp_keras.models import teachers

    cfg = with_run_dir(cfg, "table2")
    if not cfg.cache_dir:
        cfg = dataclasses.replace(cfg, cache_dir=str(Path(cfg.model_dir) / "cache"))
    start = time.time()
    teacher, spec = teachers.load_teacher(cfg.teacher)
    if spec is None:
        raise UserError(f"--teacher={cfg.teacher}: needs its sidecar JSON (RGB normalisation) to label the RGB patches")
    from isp_keras.data import pair_cache

    pair_cache.check_patch_size(teacher, cfg.patch_size, cfg.teacher)
    teachers.freeze(teacher)
    maybe_synthesize(cfg)
    rows = [
        plans.Row("teacher_raw"),
        plans.student_row("teacher_labels", cfg, 1.0, "teacher"),
        plans.student_row("distilled", cfg, cfg.alpha, "teacher"),
    ]
    out = Path(cfg.model_dir)
    levels = [plans.Level(cfg, out / mode, {"raw": mode}) for mode in cfg.modes]
    caches = {}

    def make_setup(level, norm):
        setup = pairs_setup(level.cfg, teacher, spec, level.tag["raw"])
        caches[level.tag["raw"]] = {"dir": setup.cache, "counts": setup.source.counts}
        return setup

    plan = plans.Plan("table2", cfg, rows, levels, make_setup=make_setup, command=command)
    levels_out, seconds = runner.run(plan)
    # A mode whose rows had all finished earlier was not set up in this process: its cache is read from its index.
    caches = {mode: caches.get(mode) or cache_summary(str(Path(cfg.cache_dir) / mode)) for mode in cfg.modes}
    return finish(plan, levels_out, seconds, start, {"caches": caches})


def cache_summary(cache: str) -> dict:
    from isp_keras.data import pair_cache

    index = pair_cache.read_index(cache)
    return {"dir": cache, "counts": {s: v["count"] for s, v in index["splits"].items()}}


def maybe_synthesize(cfg: Table2Config) -> None:
    from isp_keras.data import synthetic_bursts

    kind, _, root = cfg.pairs.partition(":")
    if cfg.synthesize_bursts <= 0 or kind != "hdrplus" or Path(root).exists():
        return
    if cfg.dataset != "embedded":
        raise UserError(f"--synthesize_bursts: only from --dataset=embedded (got {cfg.dataset})")
    per = cfg.burst_tiles**2
    # The test images: like HDR+ scenes for an ImageNet teacher, none was seen while training the teacher.
    images, labels = synthetic_bursts.embedded_images("test", cfg.synthesize_bursts * per)
    n = synthetic_bursts.synthesize_bursts(
        root,
        images,
        labels,
        tiles=cfg.burst_tiles,
        frames=cfg.burst_frames,
        short_exposure=cfg.short_exposure,
        cfa=cfg.cfa,
        seed=cfg.seed,
    )
    console.progress("wrote %d synthetic bursts to %s", n, root)


def pairs_setup(cfg: Table2Config, teacher, spec, mode: str):
    """An experiment.Setup whose batches come from the mode's patch cache (built or reused)."""
    from isp_keras.data import normalisation, pair_cache, pipeline, sources
    from isp_keras.training import experiment

    build = pair_cache.BuildConfig.of(cfg, str(Path(cfg.cache_dir) / mode), mode)
    index = pair_cache.build_cache(build, teacher, spec, cfg.teacher)
    stats = index["raw_stats"]
    norm = normalisation.Normalisation(
        stats["mean"], stats["std"], list(spec.rgb_mean), list(spec.rgb_std), spec.channel_order
    )
    rgb = index["rgb_stats"]
    norm = normalisation.with_input_scale(norm, rgb["mean"], rgb["std"], cfg.raw_scale)
    counts = {s: v["count"] for s, v in index["splits"].items()}
    source = sources.Source(
        f"pairs:{build.out}",
        index["classes"],
        counts,
        cfg.patch_size,
        lambda split: pair_cache.dataset(build.out, split),
        "train",
        "test",
    )
    pcfg = pipeline.PipelineConfig(
        image_size=cfg.patch_size, batch_size=cfg.batch_size, cfa=cfg.cfa, noise_std=0.0, seed=cfg.seed
    )

    return experiment.PairsSetup(cfg, source, teacher, spec, norm, pcfg, cache=build.out)
