"""Training-speed benchmark (not a test): `python -m isp_keras.benchmark --suite=train --json=PATH`.

Every figure is a ratio of two things measured side by side in the same process run:
- distill_over_plain: Distiller train step (frozen teacher forward + student forward/backward + KD loss) over the
  plain supervised student step (CE, same metrics, same optimizer), same batch. Goal <= 1.30.
- cached_over_plain: the Distiller step from cached teacher logits over the plain step. Goal <= 1.05.
- raw_ops_overhead: per-image cost the RAW ops (mosaic, noise, bilinear infill, per-site normalisation) add to
  the RGB pipeline (JPEG decode, crop/resize, batch, normalise), measured single-threaded. Goal <= 0.10.
- input_stall_fraction: share of step time spent waiting for the next batch in a real training loop (the full
  RAW pipeline feeding Distiller steps through prefetch). Goal < 0.05.
- mirrored_loss_abs_diff / mirrored_step_time_ratio: one Distiller step under MirroredStrategy over 2 logical
  CPUs vs one device on the same global batch (child process: logical devices must precede TF start-up).
The compared variants are timed interleaved (bench/timing.py: rounds of A B / B A ..., each round a short block of
steps of every variant after warm-up), and each ratio is the median of the per-round ratios, so drift and bursts on
a shared machine hit both members of a pair alike or are outvoted; `<ratio>_min/_q1/_q3/_max` give their spread.
The `*_ms` / `*_us_per_image` figures are the median over rounds of each variant's per-call time.
The unprefixed names are the embedded model's (ResNet-20, 32 px); other models carry a `<model>/` prefix.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from isp_keras import paths
from isp_keras.bench import timing
from isp_keras.config import option
from isp_keras.errors import UserError

MODELS = {
    # name: (architecture for a random-weight teacher, image size, classes, default batch)
    "embedded": ("resnet20", 32, 10, 128),
    "mobilenetv2": ("mobilenetv2", 224, 1000, 16),
    "resnet18": ("resnet18", 224, 1000, 16),
}
NORM_32 = dict(
    raw_mean=[0.45, 0.45, 0.42], raw_std=[0.27, 0.27, 0.28], rgb_mean=[0.49, 0.48, 0.45], rgb_std=[0.25, 0.24, 0.26]
)


@dataclasses.dataclass
class TrainBenchConfig:
    """Settings of the training benchmark; every field is also a flag of the same name (isp_keras.config)."""

    train_models: list[str] = option(list(MODELS), f"Models to benchmark: {', '.join(MODELS)}.", choices=tuple(MODELS))
    train_steps: int = option(
        20, "Timed steps per variant (after warm-up), in interleaved rounds of --train_block steps each."
    )
    train_block: int = option(
        2,
        "Steps of each variant timed back to back in one interleaved round; ratios are "
        "the median of the per-round ratios.",
    )
    train_warmup: int = option(2, "Untimed warm-up steps per variant.")
    train_batch_32: int = option(128, "Batch size of the 32-px model.")
    train_batch_224: int = option(16, "Batch size of the 224-px models.")
    train_pipeline_images: int = option(1024, "Images per input-pipeline timing.")
    train_pipeline_seconds: float = option(2.0, "Minimum duration of each input-pipeline timing.")
    train_pipeline_repeats: int = option(5, "Interleaved rounds of the RGB and RAW input-pipeline timings.")
    train_stall_steps: int = option(20, "Timed steps of the stall measurement.")
    train_stall_shuffle_32: int = option(
        20000, "Shuffle buffer of the 32-px stall measurement (the training default: the whole embedded split)."
    )
    train_teacher: str = option(
        "embedded",
        "The embedded model's teacher (`embedded`: data/teacher's ResNet-20, "
        "or a .keras file); a random-weight ResNet-20 if the file is missing.",
    )
    train_mirrored: bool = option(True, "Also measure MirroredStrategy over 2 logical CPUs.")
    train_seed: int = option(0, "Seed of the benchmark's random inputs and random-weight teachers.")
    train_progress: bool = option(True, "Show progress bars.")

    def validate(self) -> TrainBenchConfig:
        """Check every field (one-line UserError naming the flag); cooperative, so a config composed of several
        suites' configs checks them all. Returns self."""
        unknown = [m for m in self.train_models if m not in MODELS]
        if unknown or not self.train_models:
            problem = f"unknown {', '.join(unknown)}" if unknown else "empty"
            raise UserError(f"--train_models={','.join(self.train_models)}: {problem}; choose from {', '.join(MODELS)}")
        for name, low in (
            ("train_steps", 1),
            ("train_block", 1),
            ("train_warmup", 0),
            ("train_batch_32", 2),
            ("train_batch_224", 2),
            ("train_pipeline_images", 16),
            ("train_pipeline_repeats", 1),
            ("train_stall_steps", 1),
            ("train_stall_shuffle_32", 1),
        ):
            if getattr(self, name) < low:
                raise UserError(f"--{name}={getattr(self, name)}: must be >= {low}")
        if not self.train_pipeline_seconds >= 0.1:  # also rejects NaN
            raise UserError(f"--train_pipeline_seconds={self.train_pipeline_seconds}: must be >= 0.1")
        batches = [self.train_batch_32 if MODELS[m][1] == 32 else self.train_batch_224 for m in self.train_models]
        if self.train_pipeline_images < max(batches):
            raise UserError(
                f"--train_pipeline_images={self.train_pipeline_images}: must be >= the batch size ({max(batches)})"
            )
        if not self.train_teacher:
            raise UserError("--train_teacher: empty")
        nxt = getattr(super(), "validate", None)
        if nxt is not None:
            nxt()
        return self


def run(cfg: TrainBenchConfig) -> dict:
    """All figures of the training benchmark: {name: value}; the embedded model's unprefixed, others `<model>/`."""
    cfg.validate()
    figures = {}
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        for name in cfg.train_models:
            prefix = "" if name == "embedded" else f"{name}/"
            for key, value in bench_model(name, cfg, Path(tmp)).items():
                figures[prefix + key] = round(float(value), 6)
    return figures


def bench_model(name: str, cfg: TrainBenchConfig, tmp: Path) -> dict:
    from isp_keras.data import normalisation, sources

    arch, size, classes, _ = MODELS[name]
    batch = cfg.train_batch_32 if size == 32 else cfg.train_batch_224
    teacher, teacher_desc = load_teacher(name, cfg)
    norm = normalisation.Normalisation(**NORM_32)
    source = sources.get_source("embedded") if size == 32 else large_jpeg_source(tmp, classes, cfg.train_seed)
    out = {"batch_size": batch}
    out.update(step_times(teacher, size, classes, batch, cfg, f"{name}: steps"))
    out.update(pipeline_costs(source, size, batch, cfg, norm, f"{name}: pipeline"))
    out.update(stall(teacher, source, size, batch, norm, cfg, f"{name}: stall"))
    if cfg.train_mirrored:
        out.update(mirrored(name, teacher_desc, size, classes, batch, cfg))
    return out


def load_teacher(name: str, cfg: TrainBenchConfig):
    """(model, description for the child process): the trained embedded teacher, or random weights."""
    from isp_keras.models import architectures, teachers

    arch, size, classes, _ = MODELS[name]
    path = paths.teacher_path(cfg.train_teacher)
    if name == "embedded" and Path(path).is_file():
        teacher, _ = teachers.load_teacher(path)
        desc = {"path": path}
    else:
        import keras

        keras.utils.set_random_seed(cfg.train_seed)
        teacher = architectures.build(arch, classes, size)
        desc = {"arch": arch, "classes": classes, "size": size}
    teachers.freeze(teacher)
    return teacher, desc


def large_jpeg_source(tmp: Path, classes: int, seed: int, count: int = 256):
    """ImageNet-like inputs without ImageNet: real CIFAR-10 photos upscaled to 500x375 and stored as JPEG (q90) in
    records, so decode and random-resized-crop cost what they cost on typical ImageNet files."""
    import tensorflow as tf

    from isp_keras.data import records, sources

    out = tmp / "jpeg500"
    if not (out / "index.json").exists():
        images = sources.get_source("embedded").split("train").take(count)
        rng = np.random.default_rng(seed)

        def examples():
            for image, _ in images.as_numpy_iterator():
                big = tf.image.resize(image, [375, 500], method="bicubic")
                data = tf.io.encode_jpeg(tf.cast(tf.clip_by_value(big, 0, 255), tf.uint8), quality=90)
                yield data.numpy(), int(rng.integers(classes))

        records.write_records(
            out, [f"class{i}" for i in range(classes)], {"train": examples(), "test": examples()}, num_shards=4
        )
    return sources.get_source(f"records:{out}")


def _progress(cfg: TrainBenchConfig, desc: str):
    return lambda rounds: tqdm(rounds, desc=desc, disable=not cfg.train_progress)


def step_times(teacher, size: int, classes: int, batch: int, cfg: TrainBenchConfig, desc: str) -> dict:
    """Step times of the plain student, the Distiller and the Distiller from cached logits, timed interleaved;
    the ratios are medians of per-round ratios."""
    import keras
    import tensorflow as tf

    from isp_keras.models import students
    from isp_keras.training import distiller, schedule

    rng = np.random.default_rng(cfg.train_seed)
    student_x = tf.constant(rng.normal(size=(batch, size, size, 3)).astype(np.float32))
    teacher_x = tf.constant(rng.normal(size=(batch, size, size, 3)).astype(np.float32))
    labels = tf.constant(rng.integers(0, classes, batch).astype(np.int32))
    logits = teacher(teacher_x, training=False)

    plain = students.student_from_teacher(teacher)
    plain.compile(
        optimizer=schedule.sgd(1000, 0.01, 5e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[
            keras.metrics.SparseTopKCategoricalAccuracy(1, name="top1"),
            keras.metrics.SparseTopKCategoricalAccuracy(5, name="top5"),
        ],
    )
    variants = {"plain": (plain, (student_x, labels))}
    for name, cached in (("distill", False), ("cached", True)):
        model = distiller.Distiller(students.student_from_teacher(teacher), teacher, cached_logits=cached)
        model.compile(optimizer=schedule.sgd(1000, 0.01, 5e-4))
        variants[name] = (model, ((student_x, logits if cached else teacher_x), labels))

    def step_fn(model, data):
        step = tf.function(model.train_step)
        return lambda i: float(step(data)["loss"])  # float(): wait for the step to finish

    fns = {name: step_fn(model, data) for name, (model, data) in variants.items()}
    rounds, block = timing.split_rounds(cfg.train_steps, cfg.train_block)
    t = timing.interleaved_ratios(fns, rounds, block=block, warmup=cfg.train_warmup, progress=_progress(cfg, desc))
    return {
        "plain_step_ms": t.ms("plain"),
        "distill_step_ms": t.ms("distill"),
        "cached_step_ms": t.ms("cached"),
        **t.ratio_figures("distill_over_plain", "distill", "plain"),
        **t.ratio_figures("cached_over_plain", "cached", "plain"),
        "step_rounds": rounds,
        "step_block": block,
    }


def _single_threaded(ds):
    import tensorflow as tf

    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


def pipeline_costs(source, size: int, batch: int, cfg: TrainBenchConfig, norm, desc: str) -> dict:
    """Per-image cost (one thread) of the RGB pipeline (decode, crop/resize, batch, normalise) and of the same
    pipeline producing the student's RAW input instead (+ mosaic, noise, infill, per-site normalisation):
    `train_pipeline_repeats` interleaved rounds, each timing every pipeline for at least `train_pipeline_seconds`
    on a fresh iterator (start-up untimed; the idle pipeline's iterator is dropped, so its prefetching does not run
    while the other is timed). raw_ops_overhead is the median of the per-round (raw - rgb) / rgb."""
    from isp_keras.data import pipeline

    n = min(cfg.train_pipeline_images, source.counts["train"])
    if n < batch:
        raise UserError(
            f"--train_pipeline_images: the pipeline timing needs at least one batch of {batch} images, "
            f"{source.name} gives {n}"
        )
    pcfg = pipeline.PipelineConfig(
        image_size=size, batch_size=batch, noise_std=0.1, seed=cfg.train_seed, take=n, cache=False, shuffle_buffer=1
    )
    iterators = {}

    def start(mode):
        ds = pipeline.build(source, "train", pcfg, training=True, norm=norm, mode=mode).repeat()
        iterators[mode] = iter(_single_threaded(ds))
        next(iterators[mode])  # start-up (graph, threads, first reads) is not a per-image cost

    def stop(mode):
        iterators.pop(mode, None)

    fns = {mode: (lambda i, mode=mode: next(iterators[mode])) for mode in ("rgb", "raw")}
    # Training batches drop their remainder: every call yields `batch` images.
    t = timing.interleaved_ratios(
        fns,
        cfg.train_pipeline_repeats,
        block=1,
        warmup=0,
        min_seconds=cfg.train_pipeline_seconds,
        before={m: (lambda m=m: start(m)) for m in fns},
        after={m: (lambda m=m: stop(m)) for m in fns},
        progress=_progress(cfg, desc),
    )
    return {
        "rgb_pipeline_us_per_image": 1e3 * t.ms("rgb") / batch,
        "raw_pipeline_us_per_image": 1e3 * t.ms("raw") / batch,
        **t.ratio_figures("raw_ops_overhead", "raw", "rgb", offset=-1.0),
    }


def stall(teacher, source, size: int, batch: int, norm, cfg: TrainBenchConfig, desc: str) -> dict:
    """Real training: the full RAW pipeline (parallel, prefetched) feeding Distiller steps; the fraction of the
    loop's time spent in next(iterator) after warm-up."""
    import tensorflow as tf

    from isp_keras.data import pipeline
    from isp_keras.models import students
    from isp_keras.training import distiller, schedule

    steps_per_epoch = max(1, source.counts["train"] // batch)
    warmup = cfg.train_warmup + 3  # the first batches also fill the cache and shuffle buffers
    total = warmup + cfg.train_stall_steps
    pcfg = pipeline.PipelineConfig(
        image_size=size,
        batch_size=batch,
        noise_std=0.1,
        seed=cfg.train_seed,
        cache=size == 32,
        shuffle_buffer=cfg.train_stall_shuffle_32 if size == 32 else 4 * batch,
    )
    epochs = -(-total // steps_per_epoch)
    ds = pipeline.build(source, "train", pcfg, training=True, norm=norm, steps_per_epoch=steps_per_epoch, epochs=epochs)
    model = distiller.Distiller(students.student_from_teacher(teacher), teacher)
    model.compile(optimizer=schedule.sgd(1000, 0.01, 5e-4))
    step = tf.function(model.train_step)
    iterator = iter(ds)
    wait = busy = 0.0
    for i in tqdm(range(total), desc=desc, disable=not cfg.train_progress):
        start = time.perf_counter()
        data = next(iterator)
        got = time.perf_counter()
        float(step(data)["loss"])
        end = time.perf_counter()
        if i >= warmup:
            wait += got - start
            busy += end - got
    return {
        "input_stall_fraction": wait / (wait + busy),
        "stall_run_step_ms": 1000 * (wait + busy) / cfg.train_stall_steps,
    }


def mirrored(name: str, teacher_desc: dict, size: int, classes: int, batch: int, cfg: TrainBenchConfig) -> dict:
    """MirroredStrategy over 2 logical CPUs vs one device, in a child process (see mirrored_child)."""
    repo = Path(__file__).resolve().parents[2]
    args = json.dumps(
        {
            "teacher": teacher_desc,
            "size": size,
            "classes": classes,
            "batch": batch,
            "steps": cfg.train_steps,
            "block": cfg.train_block,
            "warmup": cfg.train_warmup,
            "seed": cfg.train_seed,
        }
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    code = f"from isp_keras.bench import train; train.mirrored_child({args!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: mirrored benchmark child failed:\n{proc.stderr[-2000:]}")
    print(f"{name}: mirrored measured", file=sys.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mirrored_child(args_json: str) -> None:
    """One Distiller step on the same global batch under each strategy (loss), then interleaved timed steps."""
    from isp_keras.training import distribute

    distribute.ensure_logical_cpus(2)
    import keras
    import tensorflow as tf

    from isp_keras.models import architectures, students, teachers
    from isp_keras.training import distiller, schedule

    args = json.loads(args_json)
    desc = args["teacher"]
    if "path" in desc:
        teacher, _ = teachers.load_teacher(desc["path"])
    else:
        keras.utils.set_random_seed(args["seed"])
        teacher = architectures.build(desc["arch"], desc["classes"], desc["size"])
    teachers.freeze(teacher)
    rng = np.random.default_rng(args["seed"])
    b, s = args["batch"], args["size"]
    data = (
        (rng.normal(size=(b, s, s, 3)).astype(np.float32), rng.normal(size=(b, s, s, 3)).astype(np.float32)),
        rng.integers(0, args["classes"], b).astype(np.int32),
    )
    fns, losses = {}, {}
    for name, strategy in (("single", tf.distribute.get_strategy()), ("mirrored", distribute.get_strategy("mirrored"))):
        with strategy.scope():
            sync_bn = strategy.num_replicas_in_sync > 1
            model = distiller.Distiller(students.student_from_teacher(teacher, sync_bn=sync_bn), teacher)
            model.compile(optimizer=schedule.sgd(1000, 0.01, 5e-4))
            model.optimizer.build(model.trainable_variables)
        iterator = iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(data).repeat()))

        def one_step(it, strategy=strategy, model=model):
            strategy.run(model.train_step, args=(next(it),))

        step = tf.function(one_step)
        step(iterator)
        losses[name] = float(model.metrics[0].result())  # the global mean over replicas

        def timed(i, step=step, iterator=iterator, model=model):
            step(iterator)
            float(model.metrics[0].result())  # wait for the step to finish

        fns[name] = timed
    rounds, block = timing.split_rounds(args["steps"], args.get("block", 1))
    t = timing.interleaved_ratios(fns, rounds, block=block, warmup=args["warmup"])
    print(
        json.dumps(
            {
                "mirrored_loss_abs_diff": abs(losses["mirrored"] - losses["single"]),
                **t.ratio_figures("mirrored_step_time_ratio", "mirrored", "single"),
                "mirrored_replicas": 2,
            }
        )
    )
