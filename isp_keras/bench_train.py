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
Timed steps are interleaved round-robin and summarised by their median, so drift hits all variants alike.
The unprefixed names are the embedded model's (ResNet-20, 32 px); other models carry a `<model>/` prefix.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from absl import flags
from tqdm import tqdm

MODELS = {
    # name: (architecture for a random-weight teacher, image size, classes, default batch)
    "embedded": ("resnet20", 32, 10, 128),
    "mobilenetv2": ("mobilenetv2", 224, 1000, 16),
    "resnet18": ("resnet18", 224, 1000, 16),
}
NORM_32 = dict(raw_mean=[0.45, 0.45, 0.42], raw_std=[0.27, 0.27, 0.28], rgb_mean=[0.49, 0.48, 0.45],
               rgb_std=[0.25, 0.24, 0.26])


@dataclasses.dataclass
class BenchConfig:
    models: tuple = ("embedded", "mobilenetv2", "resnet18")
    steps: int = 10  # timed steps per variant (after warm-up)
    warmup: int = 2
    batch_32: int = 128
    batch_224: int = 16
    pipeline_images: int = 1024
    pipeline_seconds: float = 2.0  # each pipeline timing runs at least this long
    pipeline_repeats: int = 5
    stall_steps: int = 20
    stall_shuffle_32: int = 20000  # the training default: the whole embedded split
    teacher: str = "data/teacher/resnet20_cifar10.keras"
    mirrored: bool = True
    seed: int = 0
    progress: bool = True


def define_flags() -> None:
    flags.DEFINE_list("train_models", list(BenchConfig.models), f"Models to benchmark: {', '.join(MODELS)}.")
    flags.DEFINE_integer("train_steps", BenchConfig.steps, "Timed steps per variant (after warm-up).", lower_bound=1)
    flags.DEFINE_integer("train_batch_32", BenchConfig.batch_32, "Batch size of the 32-px model.", lower_bound=2)
    flags.DEFINE_integer("train_batch_224", BenchConfig.batch_224, "Batch size of the 224-px models.", lower_bound=2)
    flags.DEFINE_integer("train_pipeline_images", BenchConfig.pipeline_images,
                         "Images per input-pipeline timing.", lower_bound=16)
    flags.DEFINE_float("train_pipeline_seconds", BenchConfig.pipeline_seconds,
                       "Minimum duration of each input-pipeline timing.", lower_bound=0.1)
    flags.DEFINE_integer("train_stall_steps", BenchConfig.stall_steps, "Timed steps of the stall measurement.",
                         lower_bound=1)
    flags.DEFINE_string("train_teacher", BenchConfig.teacher,
                        "The embedded model's teacher (.keras); a random-weight ResNet-20 if the file is missing.")
    flags.DEFINE_boolean("train_mirrored", True, "Also measure MirroredStrategy over 2 logical CPUs.")


def run(FLAGS) -> dict:
    from isp_keras.errors import UserError

    unknown = [m for m in FLAGS.train_models if m not in MODELS]
    if unknown:
        raise UserError(f"--train_models: unknown {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    cfg = BenchConfig(models=tuple(FLAGS.train_models), steps=FLAGS.train_steps, batch_32=FLAGS.train_batch_32,
                      batch_224=FLAGS.train_batch_224, pipeline_images=FLAGS.train_pipeline_images,
                      pipeline_seconds=FLAGS.train_pipeline_seconds,
                      stall_steps=FLAGS.train_stall_steps, teacher=FLAGS.train_teacher, mirrored=FLAGS.train_mirrored)
    return run_suite(cfg)


def run_suite(cfg: BenchConfig) -> dict:
    figures = {}
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        for name in cfg.models:
            prefix = "" if name == "embedded" else f"{name}/"
            for key, value in bench_model(name, cfg, Path(tmp)).items():
                figures[prefix + key] = round(float(value), 6)
    return figures


def bench_model(name: str, cfg: BenchConfig, tmp: Path) -> dict:
    from isp_keras import datasets

    arch, size, classes, _ = MODELS[name]
    batch = cfg.batch_32 if size == 32 else cfg.batch_224
    teacher, teacher_desc = load_teacher(name, cfg)
    norm = datasets.Normalisation(**NORM_32)
    source = datasets.get_source("embedded") if size == 32 else large_jpeg_source(tmp, classes, cfg.seed)
    out = {"batch_size": batch}
    out.update(step_times(teacher, size, classes, batch, cfg, f"{name}: steps"))
    out.update(pipeline_costs(source, size, batch, cfg, norm, f"{name}: pipeline"))
    out.update(stall(teacher, source, size, batch, norm, cfg, f"{name}: stall"))
    if cfg.mirrored:
        out.update(mirrored(name, teacher_desc, size, classes, batch, cfg))
    return out


def load_teacher(name: str, cfg: BenchConfig):
    """(model, description for the child process): the trained embedded teacher, or random weights."""
    from isp_keras import models

    arch, size, classes, _ = MODELS[name]
    if name == "embedded" and Path(cfg.teacher).is_file():
        teacher, _ = models.load_teacher(cfg.teacher)
        desc = {"path": cfg.teacher}
    else:
        import keras

        keras.utils.set_random_seed(cfg.seed)
        teacher = models.build(arch, classes, size)
        desc = {"arch": arch, "classes": classes, "size": size}
    models.freeze(teacher)
    return teacher, desc


def large_jpeg_source(tmp: Path, classes: int, seed: int, count: int = 256):
    """ImageNet-like inputs without ImageNet: real CIFAR-10 photos upscaled to 500x375 and stored as JPEG (q90) in
    records, so decode and random-resized-crop cost what they cost on typical ImageNet files."""
    import tensorflow as tf

    from isp_keras import datasets, records

    out = tmp / "jpeg500"
    if not (out / "index.json").exists():
        images = datasets.get_source("embedded").split("train").take(count)
        rng = np.random.default_rng(seed)

        def examples():
            for image, _ in images.as_numpy_iterator():
                big = tf.image.resize(image, [375, 500], method="bicubic")
                data = tf.io.encode_jpeg(tf.cast(tf.clip_by_value(big, 0, 255), tf.uint8), quality=90)
                yield data.numpy(), int(rng.integers(classes))

        records.write_records(out, [f"class{i}" for i in range(classes)], {"train": examples(), "test": examples()},
                              num_shards=4)
    return datasets.get_source(f"records:{out}")


def _median_ms(times) -> float:
    return 1000.0 * statistics.median(times)


def step_times(teacher, size: int, classes: int, batch: int, cfg: BenchConfig, desc: str) -> dict:
    """Median step time of the plain student, the Distiller and the Distiller from cached logits."""
    import keras
    import tensorflow as tf

    from isp_keras import distiller, models, training

    rng = np.random.default_rng(cfg.seed)
    student_x = tf.constant(rng.normal(size=(batch, size, size, 3)).astype(np.float32))
    teacher_x = tf.constant(rng.normal(size=(batch, size, size, 3)).astype(np.float32))
    labels = tf.constant(rng.integers(0, classes, batch).astype(np.int32))
    logits = teacher(teacher_x, training=False)

    plain = models.student_from_teacher(teacher)
    plain.compile(optimizer=training.sgd(1000, 0.01, 5e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseTopKCategoricalAccuracy(1, name="top1"),
                           keras.metrics.SparseTopKCategoricalAccuracy(5, name="top5")])
    variants = {"plain": (plain, (student_x, labels))}
    for name, cached in (("distill", False), ("cached", True)):
        model = distiller.Distiller(models.student_from_teacher(teacher), teacher, cached_logits=cached)
        model.compile(optimizer=training.sgd(1000, 0.01, 5e-4))
        variants[name] = (model, ((student_x, logits if cached else teacher_x), labels))
    steps = {name: tf.function(model.train_step) for name, (model, _) in variants.items()}
    times = {name: [] for name in variants}
    rounds = cfg.warmup + cfg.steps
    for r in tqdm(range(rounds), desc=desc, disable=not cfg.progress):
        for name, (_, data) in variants.items():
            start = time.perf_counter()
            logs = steps[name](data)
            float(logs["loss"])  # wait for the step to finish
            if r >= cfg.warmup:
                times[name].append(time.perf_counter() - start)
    ms = {name: _median_ms(t) for name, t in times.items()}
    return {"plain_step_ms": ms["plain"], "distill_step_ms": ms["distill"], "cached_step_ms": ms["cached"],
            "distill_over_plain": ms["distill"] / ms["plain"], "cached_over_plain": ms["cached"] / ms["plain"]}


def _single_threaded(ds):
    import tensorflow as tf

    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


def pipeline_costs(source, size: int, batch: int, cfg: BenchConfig, norm, desc: str) -> dict:
    """Per-image cost (one thread) of the RGB pipeline (decode, crop/resize, batch, normalise) and of the same
    pipeline producing the student's RAW input instead (+ mosaic, noise, infill, per-site normalisation): the best
    of `pipeline_repeats` alternating runs of at least `pipeline_seconds` each."""
    from isp_keras import datasets

    n = min(cfg.pipeline_images, source.counts["train"])
    pcfg = datasets.PipelineConfig(image_size=size, batch_size=batch, noise_std=0.1, seed=cfg.seed, take=n,
                                   cache=False, shuffle_buffer=1)
    per_image = {"rgb": [], "raw": []}
    for _ in tqdm(range(cfg.pipeline_repeats), desc=desc, disable=not cfg.progress):
        for mode in per_image:
            ds = datasets.build(source, "train", pcfg, training=True, norm=norm, mode=mode).repeat()
            iterator = iter(_single_threaded(ds))
            next(iterator)  # start-up (graph, threads, first reads) is not a per-image cost
            start = time.perf_counter()
            count = 0
            while time.perf_counter() - start < cfg.pipeline_seconds:
                count += int(next(iterator)[1].shape[0])
            per_image[mode].append((time.perf_counter() - start) / count)
    rgb, raw = min(per_image["rgb"]), min(per_image["raw"])
    return {"rgb_pipeline_us_per_image": 1e6 * rgb, "raw_pipeline_us_per_image": 1e6 * raw,
            "raw_ops_overhead": (raw - rgb) / rgb}


def stall(teacher, source, size: int, batch: int, norm, cfg: BenchConfig, desc: str) -> dict:
    """Real training: the full RAW pipeline (parallel, prefetched) feeding Distiller steps; the fraction of the
    loop's time spent in next(iterator) after warm-up."""
    import tensorflow as tf

    from isp_keras import datasets, distiller, models, training

    steps_per_epoch = max(1, source.counts["train"] // batch)
    total = cfg.warmup + 3 + cfg.stall_steps
    pcfg = datasets.PipelineConfig(image_size=size, batch_size=batch, noise_std=0.1, seed=cfg.seed,
                                   cache=size == 32, shuffle_buffer=cfg.stall_shuffle_32 if size == 32 else 4 * batch)
    epochs = -(-total // steps_per_epoch)
    ds = datasets.build(source, "train", pcfg, training=True, norm=norm, steps_per_epoch=steps_per_epoch,
                        epochs=epochs)
    model = distiller.Distiller(models.student_from_teacher(teacher), teacher)
    model.compile(optimizer=training.sgd(1000, 0.01, 5e-4))
    step = tf.function(model.train_step)
    iterator = iter(ds)
    wait = busy = 0.0
    for i in tqdm(range(total), desc=desc, disable=not cfg.progress):
        start = time.perf_counter()
        data = next(iterator)
        got = time.perf_counter()
        float(step(data)["loss"])
        end = time.perf_counter()
        if i >= cfg.warmup + 3:  # the first batches also fill the cache and shuffle buffers
            wait += got - start
            busy += end - got
    return {"input_stall_fraction": wait / (wait + busy), "stall_run_step_ms": 1000 * (wait + busy) / cfg.stall_steps}


def mirrored(name: str, teacher_desc: dict, size: int, classes: int, batch: int, cfg: BenchConfig) -> dict:
    """MirroredStrategy over 2 logical CPUs vs one device, in a child process (see mirrored_child)."""
    repo = Path(__file__).resolve().parent.parent
    args = json.dumps({"teacher": teacher_desc, "size": size, "classes": classes, "batch": batch,
                       "steps": cfg.steps, "warmup": cfg.warmup, "seed": cfg.seed})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]),
           "TF_CPP_MIN_LOG_LEVEL": "2"}
    code = f"from isp_keras import bench_train; bench_train.mirrored_child({args!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: mirrored benchmark child failed:\n{proc.stderr[-2000:]}")
    print(f"{name}: mirrored measured", file=sys.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def mirrored_child(args_json: str) -> None:
    """One Distiller step on the same global batch under each strategy (loss), then interleaved timed steps."""
    from isp_keras import distribute

    distribute.ensure_logical_cpus(2)
    import keras
    import tensorflow as tf

    from isp_keras import distiller, models, training

    args = json.loads(args_json)
    desc = args["teacher"]
    if "path" in desc:
        teacher, _ = models.load_teacher(desc["path"])
    else:
        keras.utils.set_random_seed(args["seed"])
        teacher = models.build(desc["arch"], desc["classes"], desc["size"])
    models.freeze(teacher)
    rng = np.random.default_rng(args["seed"])
    b, s = args["batch"], args["size"]
    data = ((rng.normal(size=(b, s, s, 3)).astype(np.float32), rng.normal(size=(b, s, s, 3)).astype(np.float32)),
            rng.integers(0, args["classes"], b).astype(np.int32))
    runners, losses = {}, {}
    for name, strategy in (("single", tf.distribute.get_strategy()), ("mirrored", distribute.get_strategy("mirrored"))):
        with strategy.scope():
            model = distiller.Distiller(models.student_from_teacher(teacher, sync_bn=strategy.num_replicas_in_sync > 1),
                                        teacher)
            model.compile(optimizer=training.sgd(1000, 0.01, 5e-4))
            model.optimizer.build(model.trainable_variables)
        iterator = iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(data).repeat()))

        def one_step(it, strategy=strategy, model=model):
            strategy.run(model.train_step, args=(next(it),))

        step = tf.function(one_step)
        step(iterator)
        losses[name] = float(model.metrics[0].result())  # the global mean over replicas
        runners[name] = (step, iterator, model)
    times = {name: [] for name in runners}
    for r in range(args["warmup"] + args["steps"]):
        for name, (step, iterator, model) in runners.items():
            start = time.perf_counter()
            step(iterator)
            float(model.metrics[0].result())
            if r >= args["warmup"]:
                times[name].append(time.perf_counter() - start)
    ratio = statistics.median(times["mirrored"]) / statistics.median(times["single"])
    print(json.dumps({"mirrored_loss_abs_diff": abs(losses["mirrored"] - losses["single"]),
                      "mirrored_step_time_ratio": ratio,
                      "mirrored_replicas": 2}))
