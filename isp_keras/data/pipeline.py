"""The one linear tf.data builder, and the normalisation statistics computed through it.

A source yields (uint8 RGB image [h, w, 3], int32 label). The builder turns it into
((student_input, teacher_input), label): the teacher sees the RGB crop normalised with its own statistics,
the student sees the noisy Bayer mosaic of the same crop, bilinearly infilled and normalised per Bayer site (or,
for a packed student, the mosaic's 2x2 tiles).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import tensorflow as tf

from isp_keras.data import normalisation, sources, student_inputs
from isp_keras.errors import UserError
from isp_keras.raw import bayer, sensor

AUTOTUNE = tf.data.AUTOTUNE


def _seeds_train(seed: int, ds: tf.data.Dataset) -> tf.data.Dataset:
    """Fresh per-example seeds every epoch, reproducible for a given --seed."""
    rand = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    return tf.data.Dataset.zip(ds, rand.map(lambda r: tf.stack([tf.constant(seed, tf.int64), r])))


def _epochs_from(
    ds: tf.data.Dataset, cfg: PipelineConfig, steps_per_epoch: int, start_step: int, epochs: int
) -> tf.data.Dataset:
    """(example, seed) for whole epochs of steps_per_epoch batches, from global step `start_step` to the end.

    Each epoch's order and per-example seeds are functions of (--seed, epoch index) alone, so a run resumed at
    any step sees exactly the data an uninterrupted run sees from that step on. (The epochs are chained in
    Python: Dataset.shuffle cannot take a seed computed inside a tf.data function.)
    """
    first_epoch, skip_batches = divmod(start_step, steps_per_epoch)
    examples = steps_per_epoch * cfg.batch_size
    parts = [_one_epoch(ds, cfg.seed, cfg.shuffle_buffer, examples, epoch) for epoch in range(first_epoch, epochs)]
    if not parts:
        raise ValueError(f"start_step={start_step} is past the last of {epochs} epochs")
    parts[0] = parts[0].skip(skip_batches * cfg.batch_size)
    return functools.reduce(tf.data.Dataset.concatenate, parts)


def _one_epoch(ds, seed: int, shuffle_buffer: int, examples: int, epoch: int) -> tf.data.Dataset:
    shuffle_seed = (seed * 1_000_003 + epoch * 7_919 + 1) % (2**31 - 1)
    ds = ds.shuffle(shuffle_buffer, seed=shuffle_seed, reshuffle_each_iteration=False).take(examples).enumerate()
    return ds.map(functools.partial(_epoch_seed, seed, epoch))


def _epoch_seed(seed: int, epoch: int, index, example):
    return example, tf.stack([tf.constant(seed, tf.int64), epoch * 2**32 + index])


def _seeds_eval(seed: int, ds: tf.data.Dataset) -> tf.data.Dataset:
    """Per-example seeds fixed by the example's position: the same noise on every evaluation."""
    return ds.enumerate().map(lambda i, ex: (ex, tf.stack([tf.constant(seed, tf.int64) + 7919, i])))


def prepare_rgb(example, seed, *, image_size: int, training: bool, augment: bool = True):
    """uint8 image -> float32 [0,1] RGB of image_size x image_size (augmented when training and `augment`)."""
    image, label = example
    crop_seed, flip_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    image = tf.image.convert_image_dtype(image, tf.float32)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    if training and augment:
        is_native = tf.logical_and(tf.equal(h, image_size), tf.equal(w, image_size))
        image = tf.cond(
            is_native,
            lambda: _pad_crop(image, image_size, crop_seed),
            lambda: _random_resized_crop(image, image_size, crop_seed),
        )
        image = tf.image.stateless_random_flip_left_right(image, flip_seed)
    else:
        image = _center_crop(image, image_size)
    image = tf.ensure_shape(image, [image_size, image_size, 3])
    return image, label, noise_seed


def _pad_crop(image, size, seed):
    pad = max(size // 8, 1)
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
    return tf.image.stateless_random_crop(padded, [size, size, 3], seed)


def _random_resized_crop(image, size, seed):
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        tf.zeros([1, 0, 4]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, crop_size)
    return tf.image.resize(crop, [size, size], antialias=True)


def _center_crop(image, size):
    """Resize the shorter side to size*8/7 (224 -> 256) unless the image already fits, then centre-crop."""
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    short = tf.minimum(h, w)

    def resize():
        target = tf.cast(tf.round(size * 8 / 7), tf.float32)
        scale = target / tf.cast(short, tf.float32)
        new = tf.cast(tf.round(tf.cast(tf.stack([h, w]), tf.float32) * scale), tf.int32)
        return tf.image.resize(image, tf.maximum(new, size), antialias=True)

    fits = tf.logical_and(short >= size, short <= tf.cast(tf.round(size * 8 / 7), tf.int32))
    image = tf.cond(fits, lambda: image, resize)
    return tf.image.resize_with_crop_or_pad(image, size, size)


def simulate_raw(rgb, label, noise_seed, *, cfa: str, noise_std: float):
    """The camera without its ISP: Bayer subsampling of the RGB crop plus Gaussian noise."""
    raw = bayer.add_noise(bayer.mosaic(rgb, cfa), noise_std, noise_seed)
    return raw, rgb, label


def raw_simulator(cfg: PipelineConfig):
    """The per-example RAW step chosen by `cfg.sensor`: Gaussian (the paper) or realistic (sensor.py; its noise
    levels are drawn per image, so `noise_std` does not apply). A student of another input size than the teacher's
    (`cfg.student_size`) gets the mosaic of the scene resized to its size."""
    if cfg.sensor == "realistic":
        simulate = functools.partial(sensor.simulate_raw, cfa=cfg.cfa)
    elif cfg.sensor == "gaussian":
        simulate = functools.partial(simulate_raw, cfa=cfg.cfa, noise_std=cfg.noise_std)
    else:
        raise ValueError(f"unknown sensor {cfg.sensor!r}; expected gaussian or realistic")
    if cfg.student_size in (None, cfg.image_size):
        return simulate
    return functools.partial(_at_student_size, simulate=simulate, size=cfg.student_size)


def student_scene(rgb, size: int):
    """The scene as a sensor of a student's own input size delivers it: the RGB crop resized (antialiased, the
    whole field of view kept) before Bayer sampling. Batched or not."""
    return tf.image.resize(rgb, [size, size], antialias=True)


def _at_student_size(rgb, label, noise_seed, *, simulate, size: int):
    raw, _, label = simulate(student_scene(rgb, size), label, noise_seed)
    return raw, rgb, label


def student_input(raw, *, cfa: str, norm: normalisation.Normalisation, kind: str = "infill"):
    """What the student sees, the `kind` of data/student_inputs.py: the normalised infill or the 2x2 tiles."""
    return student_inputs.get(kind).make(raw, cfa, norm)


def teacher_input(rgb, *, norm: normalisation.Normalisation):
    x = bayer.normalize(rgb, norm.rgb_mean, norm.rgb_std)
    return x[..., ::-1] if norm.channel_order == "BGR" else x


def to_model_inputs(
    raw, rgb, label, *, cfa: str, norm: normalisation.Normalisation, mode: str, kind: str = "infill", size=None
):
    """A batch as the models take it, by `mode`: distill ((student, teacher) inputs), cached (teacher logits in
    place of the teacher input), rgb or raw (one input), student_rgb ((the clean RGB at the student's input size
    `size`, in the teacher's normalisation), teacher input): what an RGB model of the student's size sees."""
    student = functools.partial(student_input, cfa=cfa, norm=norm, kind=kind)
    if mode == "cached":  # label carries (label, precomputed teacher logits): they replace the teacher input
        label, logits = label
        return (student(raw), logits), label
    if mode == "rgb":
        return teacher_input(rgb, norm=norm), label
    if mode == "student_rgb":
        scene = rgb if size in (None, rgb.shape[1]) else student_scene(rgb, size)
        return (teacher_input(scene, norm=norm), teacher_input(rgb, norm=norm)), label
    if mode == "raw":
        return student(raw), label
    return (student(raw), teacher_input(rgb, norm=norm)), label


@dataclasses.dataclass
class PipelineConfig:
    image_size: int
    batch_size: int
    cfa: str = "RGGB"
    noise_std: float = 0.1
    seed: int = 0
    take: int | None = None  # first N examples of the split (after a seeded shuffle for train)
    cache: bool = True  # keep decoded uint8 images in memory (small data sets)
    shuffle_buffer: int = 20000
    sensor: str = "gaussian"  # or "realistic": sensor.simulate_raw (unprocessing, shot + read noise)
    augment: bool = True  # random crop + flip of the training RGB; off: the teacher input is deterministic
    student_input: str = "infill"  # or "packed": the mosaic's 2x2 tiles (student_input)
    student_size: int | None = None  # the student's input size when it is not the teacher's `image_size`

    @property
    def student_image_size(self) -> int:
        return self.student_size or self.image_size


def base_examples(
    source: sources.Source, split: str, cfg: PipelineConfig, training: bool, teacher_logits=None
) -> tf.data.Dataset:
    """Decoded (image, label) of a split, optionally cut to `take` examples drawn at random (seeded).

    `teacher_logits` ([N, classes] array, or a dataset of such rows; row i for the split's i-th example):
    examples become (image, (label, logits)).
    """
    ds = source.split(split)
    if teacher_logits is not None:
        logits = (
            teacher_logits
            if isinstance(teacher_logits, tf.data.Dataset)
            else tf.data.Dataset.from_tensor_slices(np.asarray(teacher_logits, np.float32))
        )
        ds = tf.data.Dataset.zip(ds, logits).map(_with_logits)
        # Multi-worker auto-sharding by file would split the image files and the logit file differently.
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        ds = ds.with_options(options)
    if cfg.take:
        # The embedded set and records are shuffled at build time, so the first N span all classes.
        ds = ds.take(cfg.take)
    if cfg.cache:
        ds = ds.cache()
    return ds


def _with_logits(example, logits):
    image, label = example
    return image, (label, logits)


def build(
    source: sources.Source,
    split: str,
    cfg: PipelineConfig,
    *,
    training: bool,
    norm: normalisation.Normalisation | None,
    mode: str = "distill",
    steps_per_epoch: int | None = None,
    start_step: int = 0,
    epochs: int | None = None,
    teacher_logits=None,
) -> tf.data.Dataset:
    """The one linear builder: source -> (cache) -> shuffle -> seeds -> RGB crop -> RAW sim -> batch -> inputs.

    `teacher_logits` (see `base_examples`; needs `cfg.augment=False` when training): batches are
    ((student_input, teacher_logits), label) for a Distiller with `cached_logits=True`.

    Training with `steps_per_epoch` and `epochs` gives the whole run's batches from global step `start_step` on
    (resumable: see `_epochs_from`); without them, one pass reshuffled on every iteration.
    """
    if mode not in ("distill", "rgb", "raw", "mosaic", "student_rgb"):
        raise ValueError(f"unknown mode {mode!r}")
    if teacher_logits is not None:
        if mode != "distill":
            raise ValueError(f"teacher_logits need mode='distill', got {mode!r}")
        if training and cfg.augment:
            raise UserError(
                "cached teacher logits need a deterministic teacher input, but random RGB augmentation "
                "is on: pass --noaugment with --cached_logits"
            )
        mode = "cached"
    ds = base_examples(source, split, cfg, training, teacher_logits)
    if training and steps_per_epoch and epochs:
        ds = _epochs_from(ds, cfg, steps_per_epoch, start_step, epochs)
    elif training:
        ds = ds.shuffle(cfg.shuffle_buffer, seed=cfg.seed, reshuffle_each_iteration=True)
        ds = _seeds_train(cfg.seed, ds)
    else:
        ds = _seeds_eval(cfg.seed, ds)
    ds = ds.map(
        functools.partial(prepare_rgb, image_size=cfg.image_size, training=training, augment=cfg.augment),
        num_parallel_calls=AUTOTUNE,
        deterministic=True,
    )
    ds = ds.map(raw_simulator(cfg), num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.batch(cfg.batch_size, drop_remainder=training, num_parallel_calls=AUTOTUNE, deterministic=True)
    if mode != "mosaic":
        ds = ds.map(
            functools.partial(
                to_model_inputs, cfa=cfg.cfa, norm=norm, mode=mode, kind=cfg.student_input, size=cfg.student_size
            ),
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        )
        where = f"{source.name} {split}" + (f", from step {start_step}" if training and epochs else "")
        ds = ds.enumerate().map(
            functools.partial(check_finite, where=where, batch_size=cfg.batch_size),
            num_parallel_calls=AUTOTUNE,
            deterministic=True,
        )
    return ds.prefetch(AUTOTUNE)


def check_finite(batch_index, batch, *, where: str, batch_size: int):
    """Fail (naming the batch and the example in pipeline order) if a model input holds NaN/Inf, instead of
    training a silent NaN model. errors.run_main turns the failure into one line."""
    inputs, _ = batch
    rows = [
        tf.reduce_all(tf.math.is_finite(tf.reshape(x, [tf.shape(x)[0], -1])), axis=1) for x in tf.nest.flatten(inputs)
    ]
    finite = tf.reduce_all(tf.stack(rows), axis=0)
    row = tf.argmin(tf.cast(finite, tf.int32), output_type=tf.int64)
    check = tf.debugging.Assert(
        tf.reduce_all(finite),
        [
            f"isp_keras: {where}: NaN/Inf in the model input at batch",
            batch_index,
            "row",
            row,
            "= example",
            batch_index * batch_size + row,
            "in pipeline order (check the normalisation statistics and that file)",
        ],
    )
    with tf.control_dependencies([check]):
        return tf.nest.map_structure(tf.identity, batch)


def _statistics_batches(source: sources.Source, cfg: PipelineConfig, max_images: int) -> tf.data.Dataset:
    """(noisy mosaic, clean RGB, label) batches of the first `max_images` training images (after cfg.take)."""
    stats_cfg = dataclasses.replace(cfg, take=min(cfg.take or max_images, max_images), batch_size=500, cache=False)
    return build(source, source.train_split, stats_cfg, training=False, norm=None, mode="mosaic")


def compute_normalisation(
    source: sources.Source,
    cfg: PipelineConfig,
    max_images: int = 10000,
    rgb_mean=None,
    rgb_std=None,
    channel_order: str = "RGB",
    raw_scale: str = "auto",
) -> normalisation.Normalisation:
    """Per-Bayer-site mean/std of the noisy mosaics of the training split (and RGB channel stats if not given), and
    the teacher-input moments the standardised RAW is mapped to (`raw_scale`, see normalisation.with_input_scale)."""
    ds = _statistics_batches(source, cfg, max_images)
    raw_m = np.zeros((3, 3))
    rgb_sum = np.zeros(3)
    rgb_sq = np.zeros(3)
    n = 0
    for raw, rgb, _ in ds:
        raw_m += bayer.site_moments(raw, cfg.cfa).numpy()
        rgb64 = rgb.numpy().astype(np.float64).reshape(-1, 3)
        rgb_sum += rgb64.sum(0)
        rgb_sq += (rgb64**2).sum(0)
        n += rgb64.shape[0]
    if n == 0:
        raise UserError(f"{source.name}: the training split is empty")
    raw_mean, raw_std = bayer.moments_to_stats(raw_m)
    data_mean = rgb_sum / n
    data_std = np.sqrt(np.maximum(rgb_sq / n - data_mean**2, 1e-12))
    if rgb_mean is None:
        rgb_mean, rgb_std = data_mean.tolist(), data_std.tolist()
    norm = normalisation.Normalisation(
        [float(v) for v in raw_mean],
        [float(v) for v in raw_std],
        [float(v) for v in rgb_mean],
        [float(v) for v in rgb_std],
        channel_order,
    )
    norm = normalisation.with_input_scale(norm, data_mean, data_std, raw_scale)
    return normalisation.check_normalisation(norm, f"{source.name}: per-site statistics of the training split")


def compute_curve_statistics(
    source: sources.Source,
    cfg: PipelineConfig,
    norm: normalisation.Normalisation,
    curve_values,
    curve,
    max_images: int = 10000,
) -> normalisation.Normalisation:
    """`norm` with the per-Bayer-site mean/std of curve(noisy mosaic) over the training split: what a packed
    student whose RAW adapter starts at a tone curve normalises by (`curve` maps a mosaic batch [B, H, W, 1] to
    its curve, `curve_values` are the curve's initial values, recorded)."""
    moments = np.zeros((3, 3))
    for raw, _, _ in _statistics_batches(source, cfg, max_images):
        moments += bayer.site_moments(curve(raw), cfg.cfa).numpy()
    if not moments[0].all():
        raise UserError(f"{source.name}: the training split is empty")
    mean, std = bayer.moments_to_stats(moments)
    norm = dataclasses.replace(
        norm,
        curve=[float(v) for v in curve_values],
        curve_mean=[float(v) for v in mean],
        curve_std=[float(v) for v in std],
    )
    return normalisation.check_normalisation(norm, f"{source.name}: per-site statistics after the tone curve")
