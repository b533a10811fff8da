"""Shared machinery of the paper-experiment commands (`table`, `sweep`, `ablation`).

An experiment is a list of rows (a baseline evaluation of the teacher, or a student trained from the teacher's
weights) run at one or more noise levels, all on the same data, split, seed and budget. Each row lives in its own
sub-directory of --model_dir (row.json once finished, checkpoints, TensorBoard logs), so `tensorboard --logdir
<model_dir>` shows the rows side by side, and a rerun skips finished rows and resumes an interrupted one.
"""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import time
from pathlib import Path

from absl import flags

from isp_keras import datasets, experiment, flagdefs, fsutil, models, records
from isp_keras.config import TrainConfig, from_flags
from isp_keras.errors import UserError

KINDS = ("table", "sweep", "ablation")
TABLE_ROWS = ("teacher_clean", "teacher_raw", "gt_labels", "teacher_labels", "distilled")
BASELINES = ("teacher_clean", "teacher_raw")
TITLES = {"table": "Table 1: teacher baselines and RAW students", "sweep": "Noise sweep: top-1 vs noise std",
          "ablation": "Ablation: fine-tune only the first k stages/blocks"}
ROW_FILE = "row.json"
PLAN_FILE = "experiment.json"
NORM_FILE = "normalisation.json"
RESULTS_MD = "results.md"
PLOT_FILE = "sweep_top1.png"
PLOT_SIZE = (640, 480)
# Settings that may differ between a run and its resumption without changing any row's numbers.
_RESUMABLE_KEYS = ("model_dir", "overwrite", "strict", "strategy", "checkpoint_steps", "checkpoint_epochs",
                   "data_service")


@dataclasses.dataclass(frozen=True)
class Row:
    """A baseline (alpha None: evaluate the teacher) or a student trained from the teacher's weights."""

    name: str
    alpha: float | None = None
    hard_labels: str = "gt"
    finetune_first: int | None = None

    @property
    def trains(self) -> bool:
        return self.alpha is not None

    def describe(self, cfg: TrainConfig) -> str:
        if self.name == "teacher_clean":
            return "teacher on clean RGB (upper bound)"
        if self.name == "teacher_raw":
            return "teacher on the RAW input, no training"
        loss = "CE" if self.alpha == 1 else f"{self.alpha:g}*CE + {1 - self.alpha:g}*T^2*KL, T={cfg.temperature:g}"
        scope = "all layers" if self.finetune_first is None else f"first {self.finetune_first} stage(s), rest frozen"
        return f"student from the teacher's weights: {loss}, hard labels {self.hard_labels}, {scope}"


def table_rows(cfg: TrainConfig, names) -> list[Row]:
    spec = {"teacher_clean": Row("teacher_clean"), "teacher_raw": Row("teacher_raw"),
            "gt_labels": Row("gt_labels", 1.0, "gt"), "teacher_labels": Row("teacher_labels", 1.0, "teacher"),
            "distilled": Row("distilled", cfg.alpha, cfg.hard_labels)}
    return [spec[n] for n in names]


def ablation_rows(cfg: TrainConfig, ks) -> list[Row]:
    tuned = [Row(f"finetune_first_{k}", cfg.alpha, cfg.hard_labels, k) for k in ks]
    return table_rows(cfg, BASELINES) + tuned + [Row("finetune_all", cfg.alpha, cfg.hard_labels)]


@dataclasses.dataclass
class Options:
    kind: str
    cfg: TrainConfig
    rows: list
    noise_stds: list
    dry_run: bool = False
    command: str = ""
    verbose: int | str = "auto"

    @property
    def out(self) -> Path:
        return Path(self.cfg.model_dir)

    def level_dir(self, noise_std: float) -> Path:
        return self.out / f"noise_{noise_std:g}" if self.kind == "sweep" else self.out


# ---------------------------------------------------------------- flags


def define_flags(kind: str, flag_values: flags.FlagValues | None = None) -> None:
    fv = dict(flag_values=flag_values if flag_values is not None else flags.FLAGS)
    flagdefs.define_train_flags(flag_values)
    flags.DEFINE_boolean("dry_run", False, "Validate the flags and print the plan; read no data, train nothing.", **fv)
    if kind in ("table", "sweep"):
        flags.DEFINE_list("rows", list(TABLE_ROWS), f"Rows to run, from {', '.join(TABLE_ROWS)}.", **fv)
    if kind == "sweep":
        flags.DEFINE_list("noise_stds", ["0", "0.05", "0.1", "0.2", "0.3"],
                          "Noise stds to sweep (replaces --noise_std).", **fv)
    if kind == "ablation":
        flags.DEFINE_list("finetune_ks", ["1", "2", "3"],
                          "k values: rows finetune_first_k train only the stem and the first k stages/blocks "
                          "(classifier frozen); a finetune_all row is always added.", **fv)


def make_main(kind: str, run, flag_values=None):
    """The absl `main` of an experiment command: strategy first (multi_worker/tpu configure TensorFlow), then
    options from flags, then the plan (--dry_run) or the run."""

    def main(argv):
        import sys

        from isp_keras import distribute

        del argv
        fv = flag_values if flag_values is not None else flags.FLAGS
        command = " ".join([f"python -m isp_keras.experiments.{kind}"] + sys.argv[1:])
        if not fv.dry_run:
            distribute.init(fv.strategy, fv.tpu, fv.cpu_replicas)
        opts = options_from_flags(kind, fv, command)
        if opts.dry_run:
            print(plan_text(opts))
            return
        run(opts)

    return main


def default_model_dir(kind: str, cfg: TrainConfig) -> str:
    data = cfg.dataset.replace(":", "_").replace("/", "_")
    noise = "" if kind == "sweep" else f"-noise{cfg.noise_std:g}"
    return str(Path("runs") / f"{kind}-{data}{noise}-{cfg.cfa}-seed{cfg.seed}")


def options_from_flags(kind: str, flag_values, command: str = "") -> Options:
    cfg = from_flags(flag_values)
    noise_stds = [cfg.noise_std]
    if kind == "ablation":
        ks = _unique(_parse_list(flag_values["finetune_ks"].value, int, "finetune_ks"), "finetune_ks")
        if min(ks) < 1:
            raise UserError(f"--finetune_ks={','.join(map(str, ks))}: every k must be >= 1")
        rows = ablation_rows(cfg, ks)
    else:
        names = _unique(_parse_list(flag_values["rows"].value, str, "rows"), "rows")
        unknown = [n for n in names if n not in TABLE_ROWS]
        if unknown:
            raise UserError(f"--rows: unknown row {unknown[0]!r}; choose from {', '.join(TABLE_ROWS)}")
        rows = table_rows(cfg, names)
    if kind == "sweep":
        noise_stds = _unique(_parse_list(flag_values["noise_stds"].value, float, "noise_stds"), "noise_stds")
        if min(noise_stds) < 0:
            raise UserError(f"--noise_stds: {min(noise_stds):g} is negative")
    if not cfg.model_dir:
        cfg.model_dir = default_model_dir(kind, cfg)
    return Options(kind, cfg, rows, noise_stds, bool(flag_values["dry_run"].value), command)


def _parse_list(values, kind, flag):
    if not values:
        raise UserError(f"--{flag}: empty list")
    try:
        return [kind(v) for v in values]
    except ValueError:
        raise UserError(f"--{flag}={','.join(values)}: not a list of {kind.__name__} values") from None


def _unique(values, flag):
    if len(set(values)) != len(values):
        raise UserError(f"--{flag}={','.join(map(str, values))}: repeated values")
    return values


# ---------------------------------------------------------------- dry run


def plan_text(opts: Options) -> str:
    """What the command would do, validated as far as possible without reading any data or training."""
    cfg = opts.cfg
    teacher_desc, teacher, spec = _describe_teacher(cfg.teacher)
    data_desc, train_count, num_classes = _describe_dataset(cfg)
    image_size = cfg.image_size or (spec.image_size if spec else (models.input_size(teacher)[0] if teacher else None))
    if teacher is not None and image_size and num_classes:
        models.check_teacher_matches(teacher, image_size, num_classes, cfg.teacher)
    ks = [r.finetune_first for r in opts.rows if r.finetune_first]
    if teacher is not None and ks:
        check_ks(teacher, ks)
    steps = "(steps set by the data)"
    if train_count is not None:
        n = min(train_count, cfg.train_take or train_count)
        steps = f"{n // cfg.batch_size} steps ({n} images)"
    noise = ", ".join(f"{s:g}" for s in opts.noise_stds)
    lines = [f"{opts.kind} (dry run: no data read, nothing trained) -> {opts.out}",
             f"  data:     {data_desc}; test {cfg.test_take or 'all'} images",
             f"  teacher:  {teacher_desc}",
             f"  raw:      {image_size or '? (from the teacher)'} px, CFA {cfg.cfa}, noise std {noise}, "
             f"seed {cfg.seed}",
             f"  budget:   per student row {cfg.epochs} epochs x {steps}, batch {cfg.batch_size}; Nesterov SGD lr "
             f"{cfg.lr:g} (warmup {cfg.warmup_epochs:g} epochs, cosine), weight decay {cfg.weight_decay:g}"]
    if image_size:
        student_spec, teacher_spec = _pipeline_spec(cfg, image_size)[0]
        lines.append(f"  pipeline: student input {student_spec.shape} {student_spec.dtype.name}, "
                     f"teacher input {teacher_spec.shape} {teacher_spec.dtype.name}")
    if ks and teacher is None:
        lines.append("  k values are checked against the model when the teacher loads")
    lines.append("  rows:")
    for std in opts.noise_stds:
        level = dataclasses.replace(cfg, noise_std=std)
        where = opts.level_dir(std)
        for row in opts.rows:
            done = " [done]" if _read_row(where / row.name) else ""
            lines.append(f"    {str(where / row.name) + ':':<52} {row.describe(level)}{done}")
    return "\n".join(lines)


def _describe_teacher(name: str):
    if name in models.KERAS_APPLICATIONS:
        import keras

        model = getattr(keras.applications, name)(weights=None, classifier_activation=None)
        return f"keras.applications.{name} (ImageNet weights, downloaded on the first real run)", model, None
    if Path(name).exists():
        model, spec = models.load_teacher(name)
        arch = (spec.arch if spec and spec.arch else model.name)
        return f"{name} ({arch}, {models.num_outputs(model)} classes)", model, spec
    return f"{name} (not present here; a real run needs it)", None, None


def _describe_dataset(cfg: TrainConfig):
    kind, _, arg = cfg.dataset.partition(":")
    if cfg.dataset == "embedded" or (kind == "records" and arg):
        path = datasets.EMBEDDED_DIR if cfg.dataset == "embedded" else Path(arg)
        index = records.read_index(path)
        counts = {k: v["count"] for k, v in index["splits"].items()}
        return f"{cfg.dataset} ({counts})", counts.get("train"), len(index["classes"])
    if kind == "tfds" and arg:
        return f"TFDS {arg} (prepared locally; ILSVRC needs its manual download)", None, None
    if kind == "folder" and arg:
        if not Path(arg).is_dir():
            raise UserError(f"--dataset=folder:{arg}: not a directory")
        return f"image folder {arg}", None, None
    raise UserError(f"--dataset: unknown dataset {cfg.dataset!r}; use embedded, folder:PATH, tfds:NAME or records:PATH")


def _pipeline_spec(cfg: TrainConfig, image_size: int):
    """The training pipeline's element spec, built on an empty stand-in source (traced, never iterated)."""
    import tensorflow as tf

    signature = (tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([], tf.int32))
    stub = datasets.Source("dry-run", [], {}, None,
                           lambda split: tf.data.Dataset.from_generator(lambda: iter(()), output_signature=signature))
    norm = datasets.Normalisation([0.0] * 3, [1.0] * 3, [0.0] * 3, [1.0] * 3)
    pcfg = datasets.PipelineConfig(image_size=image_size, batch_size=cfg.batch_size, cfa=cfg.cfa,
                                   noise_std=cfg.noise_std, seed=cfg.seed, take=cfg.train_take)
    return datasets.build(stub, "train", pcfg, training=True, norm=norm).element_spec


def check_ks(teacher, ks) -> None:
    """Every k must name an existing stage/block of the student (checked on a throwaway clone)."""
    student = models.student_from_teacher(teacher)
    for k in ks:
        try:
            models.set_trainable_prefix(student, k)
        except UserError as exc:
            raise UserError(f"--finetune_ks={k}: {str(exc).removeprefix('--finetune_first: ')}") from None


# ---------------------------------------------------------------- running rows


def run_levels(opts: Options, log=print) -> tuple[list[dict], dict]:
    """Run (or resume) every row at every noise level. Returns ([{"noise_std", "rows"}], {row dir: seconds})."""
    _prepare_out(opts)
    levels, seconds = [], {}
    for std in opts.noise_stds:
        cfg = dataclasses.replace(opts.cfg, noise_std=std)
        rows, secs = _run_level(opts, cfg, opts.level_dir(std), log)
        levels.append({"noise_std": std, "rows": rows})
        seconds.update({str((opts.level_dir(std) / name).relative_to(opts.out)): s for name, s in secs.items()})
    return levels, seconds


def _run_level(opts: Options, cfg: TrainConfig, level_dir: Path, log):
    finished = {row.name: _read_row(level_dir / row.name) for row in opts.rows}
    todo = [row for row in opts.rows if finished[row.name] is None]
    for row in opts.rows:
        if finished[row.name]:
            log(f"{level_dir / row.name}: finished earlier, top-1 {finished[row.name]['row']['top1']:.2f}%")
    if todo:
        norm_path = level_dir / NORM_FILE
        s = experiment.setup(cfg, norm=datasets.load_normalisation(norm_path) if norm_path.exists() else None)
        if not norm_path.exists():
            datasets.save_normalisation(norm_path, s.norm)
        ks = [row.finetune_first for row in todo if row.finetune_first]
        if ks:
            check_ks(s.teacher, ks)
        baselines = None
        for row in todo:
            row_dir = level_dir / row.name
            log(f"{row_dir}: {row.describe(cfg)}")
            start = time.time()
            if row.trains:
                result, _ = experiment.train_student(s, row_dir, row.name, row.alpha, row.hard_labels,
                                                     row.finetune_first, verbose=opts.verbose)
            else:
                baselines = baselines or {r["name"]: r for r in experiment.baseline_rows(s)}
                result = baselines[row.name]
            spent = round(time.time() - start, 1)
            _log_scalars(row_dir, result, cfg.epochs, row.trains)
            finished[row.name] = {"row": result, "seconds": spent}
            fsutil.write_json_atomic(row_dir / ROW_FILE, finished[row.name])
            log(f"{row_dir}: top-1 {result['top1']:.2f}%, top-5 {result['top5']:.2f}%, "
                f"agreement {result['agreement']:.2f}% ({spent:.0f} s)")
    return [finished[r.name]["row"] for r in opts.rows], {r.name: finished[r.name]["seconds"] for r in opts.rows}


def _read_row(row_dir: Path) -> dict | None:
    path = row_dir / ROW_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return None
    return data if isinstance(data, dict) and data.get("row", {}).get("name") == row_dir.name else None


def _log_scalars(row_dir: Path, row: dict, epochs: int, trained: bool) -> None:
    """Test metrics as TensorBoard scalars (baselines as flat lines over the students' epochs)."""
    import tensorflow as tf

    writer = tf.summary.create_file_writer(str(row_dir / "logs" / "test"))
    with writer.as_default():
        for step in ((epochs,) if trained else (0, epochs)):
            for key in ("top1", "top5", "agreement"):
                tf.summary.scalar(f"test/{key}", row[key], step=step)
    writer.close()


def _guard_config(opts: Options) -> dict:
    config = {k: v for k, v in opts.cfg.to_json().items() if k not in _RESUMABLE_KEYS}
    if opts.kind == "sweep":
        config.pop("noise_std")
    return config


def _prepare_out(opts: Options) -> None:
    """Start, resume (same settings only) or, with --overwrite, redo the planned rows in --model_dir."""
    out = opts.out
    record = {"command": opts.kind, "config": _guard_config(opts)}
    plan = out / PLAN_FILE
    if opts.cfg.overwrite:
        _clear(opts)
    elif plan.exists():
        try:
            old = json.loads(plan.read_text())
        except ValueError as exc:
            raise UserError(f"{plan}: unreadable ({exc}); pass --overwrite to start afresh") from None
        if old.get("command") != opts.kind:
            raise UserError(f"{out}: holds a {old.get('command')} run, not a {opts.kind} run; "
                            f"choose another --model_dir")
        new, before = record["config"], old.get("config", {})
        changed = [k for k in sorted(set(new) | set(before)) if new.get(k) != before.get(k)]
        if changed:
            k = changed[0]
            raise UserError(f"{out}: its rows were made with --{k}={before.get(k)} (now {new.get(k)}); "
                            f"pass --overwrite to redo them or choose another --model_dir")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fsutil.write_json_atomic(plan, record)
    except OSError as exc:
        raise UserError(f"{out}: cannot write the run directory ({exc.strerror or exc})") from None


def _clear(opts: Options) -> None:
    for std in opts.noise_stds:
        level = opts.level_dir(std)
        for row in opts.rows:
            if (level / row.name).is_dir():
                shutil.rmtree(level / row.name)
        (level / NORM_FILE).unlink(missing_ok=True)
    for name in (PLAN_FILE, experiment.RESULTS, RESULTS_MD, PLOT_FILE):
        (opts.out / name).unlink(missing_ok=True)


# ---------------------------------------------------------------- outputs


def check_rows(rows: list[dict]) -> None:
    for row in rows:
        for key in ("top1", "top5", "agreement"):
            if not 0.0 <= float(row[key]) <= 100.0:
                raise ValueError(f"row {row['name']}: {key}={row[key]!r} is not a percentage")


def summary(opts: Options) -> str:
    cfg = opts.cfg
    noise = ", ".join(f"{s:g}" for s in opts.noise_stds)
    take = f", first {cfg.train_take} training images" if cfg.train_take else ""
    return (f"Data {cfg.dataset} (test: {cfg.test_take or 'all'} images), CFA {cfg.cfa}, noise std {noise}, "
            f"seed {cfg.seed}. Every student row starts from the teacher `{cfg.teacher}` and trains {cfg.epochs} "
            f"epochs{take}, batch {cfg.batch_size}, Nesterov SGD lr {cfg.lr:g} (warmup {cfg.warmup_epochs:g} "
            f"epochs, cosine), weight decay {cfg.weight_decay:g}; distillation alpha {cfg.alpha:g}, "
            f"T {cfg.temperature:g}.")


def write_markdown(opts: Options, body: str) -> str:
    command = f"\n\nCommand: `{opts.command}`" if opts.command else ""
    text = f"# {TITLES[opts.kind]}\n\n{summary(opts)}{command}\n\n{body}\n"
    fsutil.write_text_atomic(opts.out / RESULTS_MD, text)
    return text


def format_sweep(levels: list[dict]) -> str:
    """Top-1 per row (lines) and noise std (columns)."""
    names = [r["name"] for r in levels[0]["rows"]]
    lines = ["| row | " + " | ".join(f"std {lvl['noise_std']:g}" for lvl in levels) + " |",
             "|---|" + "---:|" * len(levels)]
    for name in names:
        cells = [f"{_top1(lvl, name):.2f}" for lvl in levels]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _top1(level: dict, name: str) -> float:
    return next(r["top1"] for r in level["rows"] if r["name"] == name)


def plot_sweep(levels: list[dict], path, title: str) -> Path:
    """Top-1 vs noise std, one line per row, as a PLOT_SIZE PNG (Agg canvas, no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(PLOT_SIZE[0] / 100, PLOT_SIZE[1] / 100), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    stds = [lvl["noise_std"] for lvl in levels]
    for name in (r["name"] for r in levels[0]["rows"]):
        ax.plot(stds, [_top1(lvl, name) for lvl in levels], marker="o", label=name)
    ax.set_xlabel("noise std (Gaussian, on the [0, 1] mosaic)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    fsutil.write_bytes_atomic(path, buf.getvalue())
    return Path(path)
