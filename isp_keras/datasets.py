"""Data sources and the one linear tf.data builder.

A source yields (uint8 RGB image [h, w, 3], int32 label). The builder turns it into
((student_input, teacher_input), label): the teacher sees the RGB crop normalised with its own statistics,
the student sees the noisy Bayer mosaic of the same crop, bilinearly infilled and normalised per Bayer site.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
import tensorflow as tf
from absl import logging

from isp_keras import bayer, records, sensor
from isp_keras.errors import UserError

AUTOTUNE = tf.data.AUTOTUNE
EMBEDDED_DIR = Path(__file__).resolve().parent.parent / "data" / "embedded"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


@dataclasses.dataclass
class Source:
    """A labelled image collection with named splits; `split(name)` gives (uint8 [h,w,3], int32) examples."""

    name: str
    classes: list
    counts: dict
    native_size: int | None
    split_fn: callable = dataclasses.field(repr=False)
    train_split: str = "train"
    test_split: str = "test"
    notes: list = dataclasses.field(default_factory=list)  # what was converted, cropped or skipped, for the user

    def split(self, name: str) -> tf.data.Dataset:
        return self.split_fn(name)


def _decode(image_bytes, label):
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3]), label


def records_source(path, name=None) -> Source:
    index = records.read_index(path)
    splits = index["splits"]

    def split_fn(split):
        return records.dataset(path, split).map(_decode, num_parallel_calls=AUTOTUNE)

    test = "test" if "test" in splits else ("validation" if "validation" in splits else None)
    if "train" not in splits or test is None:
        raise UserError(f"{path}: records need a 'train' and a 'test' (or 'validation') split")
    return Source(name or f"records:{path}", index["classes"], {k: v["count"] for k, v in splits.items()},
                  index.get("image_size"), split_fn, "train", test)


def _list_folder(root: Path):
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files, labels = [], []
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).rglob("*")):
            if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file():
                files.append(str(f))
                labels.append(label)
    return classes, files, labels


# What PIL calls the formats tf.io.decode_image reads.
_DECODABLE = {"JPEG", "MPO", "PNG", "BMP", "GIF"}


def _inspect_image(path: str) -> tuple[str | None, str, tuple[int, int]]:
    """(problem or None, PIL mode, (width, height)) from the file's header only."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            fmt, mode, size = im.format, im.mode, im.size
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        return f"not a readable image ({type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''})", "", (0, 0)
    if fmt not in _DECODABLE:
        return f"{fmt} data, which the pipeline cannot decode", mode, size
    if mode == "CMYK":
        return "a CMYK image (convert it to RGB)", mode, size
    return None, mode, size


def scan_images(files: list, labels: list, where: str, strict: bool) -> tuple[list, list, list]:
    """Check each image file's header: skip unreadable ones (or stop with --strict) and say what the pipeline
    will convert (1-channel: channel repeated; alpha: dropped) or crop (odd sizes). Returns (files, labels, notes)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(_inspect_image, files))
    keep_files, keep_labels, bad, gray, alpha, odd = [], [], [], [], [], []
    for f, y, (problem, mode, (w, h)) in zip(files, labels, found):
        if problem:
            if strict:
                raise UserError(f"{f}: {problem} (--strict stops at unreadable files; without it they are skipped)")
            bad.append(f"{f}: {problem}")
            continue
        keep_files.append(f)
        keep_labels.append(y)
        if mode in ("1", "L", "I", "I;16", "F"):
            gray.append(f)
        elif mode in ("LA", "RGBA", "PA", "La", "RGBa"):
            alpha.append(f)
        if w % 2 or h % 2:
            odd.append(f"{f} ({w}x{h})")
    notes = []
    if bad:
        notes.append(f"{where}: skipped {len(bad)} unreadable image file(s), e.g. {bad[0]} (--strict stops instead)")
    if gray:
        notes.append(f"{where}: converting {len(gray)} 1-channel (grayscale) image(s) to RGB by repeating the "
                     f"channel, e.g. {gray[0]}")
    if alpha:
        notes.append(f"{where}: dropping the alpha channel of {len(alpha)} 4-channel image(s) (RGB kept, not "
                     f"composited), e.g. {alpha[0]}")
    if odd:
        notes.append(f"{where}: {len(odd)} image(s) of odd width or height, e.g. {odd[0]}: the pipeline crops and "
                     f"resizes every image to the even --image_size, as the 2x2 Bayer pattern needs")
    for note in notes:
        logging.warning("%s", note)
    return keep_files, keep_labels, notes


def folder_source(path, test_fraction: float = 0.2, seed: int = 0, strict: bool = False) -> Source:
    """Class sub-folders; either PATH/{train,test|val}/<class>/... or PATH/<class>/... split by --seed.

    Unreadable files are skipped with a count (or stop the run with `strict`); see `scan_images`.
    """
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"--dataset=folder:{path}: not a directory")
    test_dir = next((root / d for d in ("test", "val", "validation") if (root / d).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        classes, train_files, train_labels = _list_folder(root / "train")
        test_classes, test_files, test_labels = _list_folder(test_dir)
        if test_classes != classes:
            raise UserError(f"{test_dir}: class folders differ from {root / 'train'}")
        parts = {"train": (train_files, train_labels), "test": (test_files, test_labels)}
    else:
        classes, files, labels = _list_folder(root)
        order = np.random.default_rng(seed).permutation(len(files))
        n_test = int(round(len(files) * test_fraction))
        test_idx, train_idx = order[:n_test], order[n_test:]
        parts = {"train": ([files[i] for i in train_idx], [labels[i] for i in train_idx]),
                 "test": ([files[i] for i in test_idx], [labels[i] for i in test_idx])}
    if len(classes) < 2:
        raise UserError(f"--dataset=folder:{path}: found {len(classes)} class sub-folders; need at least 2")
    notes = []
    for split, (files, labels) in list(parts.items()):
        files, labels, split_notes = scan_images(files, labels, f"folder:{path} ({split})", strict)
        parts[split] = (files, labels)
        notes += split_notes
        if not files:
            raise UserError(f"--dataset=folder:{path}: no readable images ({', '.join(IMAGE_EXTENSIONS)}) in the "
                            f"{split} split")

    def split_fn(split):
        files, labels = parts[split]
        ds = tf.data.Dataset.from_tensor_slices((files, np.asarray(labels, np.int32)))
        ds = ds.map(lambda f, y: _decode(tf.io.read_file(f), y), num_parallel_calls=AUTOTUNE)
        # A file whose header reads but whose data is corrupt: skipped (TF logs it) unless --strict.
        return ds if strict else ds.ignore_errors(log_warning=True)

    return Source(f"folder:{path}", classes, {k: len(v[0]) for k, v in parts.items()}, None, split_fn, notes=notes)


def tfds_source(name: str, data_dir: str | None = None) -> Source:
    """A TFDS dataset that is already prepared locally (or can be downloaded, when online)."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as exc:
        raise UserError(f"--dataset=tfds:{name}: unknown TFDS dataset ({str(exc).splitlines()[0][:160]})") from None
    if not builder.is_prepared():
        _check_online(f"--dataset=tfds:{name}", builder.data_dir)
        try:
            builder.download_and_prepare()
        except Exception as exc:
            raise UserError(f"--dataset=tfds:{name}: not prepared in {builder.data_dir} and could not be "
                            f"downloaded ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})"
                            ) from None
    info = builder.info
    if "label" not in info.features or "image" not in info.features:
        raise UserError(f"--dataset=tfds:{name}: needs 'image' and 'label' features")
    splits = set(info.splits)
    test = "test" if "test" in splits else "validation"
    if "train" not in splits or test not in splits:
        raise UserError(f"--dataset=tfds:{name}: needs a train and a test/validation split")

    def split_fn(split):
        ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False,
                                read_config=tfds.ReadConfig(try_autocache=False))
        return ds.map(lambda x, y: (_as_rgb(x), tf.cast(y, tf.int32)), num_parallel_calls=AUTOTUNE)

    shape = info.features["image"].shape
    native = shape[0] if shape and shape[0] == shape[1] and shape[0] is not None else None
    notes = []
    if shape and shape[-1] in (1, 4):
        notes.append(f"--dataset=tfds:{name}: {shape[-1]}-channel images; "
                     + ("repeating the channel to RGB" if shape[-1] == 1 else "dropping the alpha channel (RGB kept)"))
        logging.warning("%s", notes[-1])
    return Source(f"tfds:{name}", list(info.features["label"].names), {s: info.splits[s].num_examples for s in splits},
                  native, split_fn, "train", test, notes=notes)


def _check_online(what: str, data_dir, host: str = "storage.googleapis.com", timeout: float = 5.0) -> None:
    """Fail in seconds, not after TFDS's minutes of retries, when there is no network to download from.

    The name lookup runs in a thread because getaddrinfo ignores socket timeouts."""
    import concurrent.futures
    import socket

    def connect():
        socket.create_connection((host, 443), timeout=timeout).close()

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(connect).result(timeout=timeout)
    except (OSError, concurrent.futures.TimeoutError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or "timed out"
        raise UserError(f"{what}: not prepared in {data_dir} and there is no network to download it "
                        f"({host}: {reason}); prepare it where you are online (`tfds build`) "
                        f"and copy the data dir") from None
    finally:
        pool.shutdown(wait=False)


def _as_rgb(image):
    image = tf.convert_to_tensor(image)
    channels = image.shape[-1]
    if channels == 1:
        return tf.image.grayscale_to_rgb(image)
    if channels == 4:
        return image[..., :3]
    return image


def get_source(spec: str, seed: int = 0, strict: bool = False) -> Source:
    """`embedded`, `folder:PATH`, `tfds:NAME` or `records:PATH`. `strict`: stop at unreadable folder images."""
    if spec == "embedded":
        if not (EMBEDDED_DIR / "index.json").exists():
            raise UserError(f"--dataset=embedded: {EMBEDDED_DIR} is missing; see BUILD_NOTES.md to rebuild it")
        return records_source(EMBEDDED_DIR, name="embedded")
    kind, _, arg = spec.partition(":")
    if kind == "folder" and arg:
        return folder_source(arg, seed=seed, strict=strict)
    if kind == "tfds" and arg:
        return tfds_source(arg)
    if kind == "records" and arg:
        return records_source(arg)
    raise UserError(f"--dataset: unknown dataset {spec!r}; use embedded, folder:PATH, tfds:NAME or records:PATH")


# ---------------------------------------------------------------- per-example functions


def _seeds_train(seed: int, ds: tf.data.Dataset) -> tf.data.Dataset:
    """Fresh per-example seeds every epoch, reproducible for a given --seed."""
    rand = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    return tf.data.Dataset.zip(ds, rand.map(lambda r: tf.stack([tf.constant(seed, tf.int64), r])))


def _epochs_from(ds: tf.data.Dataset, cfg: "PipelineConfig", steps_per_epoch: int, start_step: int,
                 epochs: int) -> tf.data.Dataset:
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
        image = tf.cond(is_native,
                        lambda: _pad_crop(image, image_size, crop_seed),
                        lambda: _random_resized_crop(image, image_size, crop_seed))
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
        tf.shape(image), tf.zeros([1, 0, 4]), seed=seed, min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), use_image_if_no_bounding_boxes=True)
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


def raw_simulator(cfg: "PipelineConfig"):
    """The per-example RAW step chosen by `cfg.sensor`: Gaussian (the paper) or realistic (sensor.py; its noise
    levels are drawn per image, so `noise_std` does not apply)."""
    if cfg.sensor == "realistic":
        return functools.partial(sensor.simulate_raw, cfa=cfg.cfa)
    if cfg.sensor != "gaussian":
        raise ValueError(f"unknown sensor {cfg.sensor!r}; expected gaussian or realistic")
    return functools.partial(simulate_raw, cfa=cfg.cfa, noise_std=cfg.noise_std)


# ---------------------------------------------------------------- per-batch functions


@dataclasses.dataclass
class Normalisation:
    """Input statistics: per Bayer site for the student, per RGB channel for the teacher."""

    raw_mean: list
    raw_std: list
    rgb_mean: list
    rgb_std: list
    channel_order: str = "RGB"

    def to_json(self):
        return dataclasses.asdict(self)


def student_input(raw, *, cfa: str, norm: Normalisation):
    x = bayer.raw_to_input(raw, cfa, norm.raw_mean, norm.raw_std)
    return x[..., ::-1] if norm.channel_order == "BGR" else x


def teacher_input(rgb, *, norm: Normalisation):
    x = bayer.normalize(rgb, norm.rgb_mean, norm.rgb_std)
    return x[..., ::-1] if norm.channel_order == "BGR" else x


def to_model_inputs(raw, rgb, label, *, cfa: str, norm: Normalisation, mode: str):
    if mode == "cached":  # label carries (label, precomputed teacher logits): they replace the teacher input
        label, logits = label
        return (student_input(raw, cfa=cfa, norm=norm), logits), label
    if mode == "rgb":
        return teacher_input(rgb, norm=norm), label
    if mode == "raw":
        return student_input(raw, cfa=cfa, norm=norm), label
    return (student_input(raw, cfa=cfa, norm=norm), teacher_input(rgb, norm=norm)), label


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


def base_examples(source: Source, split: str, cfg: PipelineConfig, training: bool,
                  teacher_logits=None) -> tf.data.Dataset:
    """Decoded (image, label) of a split, optionally cut to `take` examples drawn at random (seeded).

    `teacher_logits` ([N, classes] array, or a dataset of such rows; row i for the split's i-th example):
    examples become (image, (label, logits)).
    """
    ds = source.split(split)
    if teacher_logits is not None:
        logits = (teacher_logits if isinstance(teacher_logits, tf.data.Dataset)
                  else tf.data.Dataset.from_tensor_slices(np.asarray(teacher_logits, np.float32)))
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


def build(source: Source, split: str, cfg: PipelineConfig, *, training: bool, norm: Normalisation | None,
          mode: str = "distill", steps_per_epoch: int | None = None, start_step: int = 0,
          epochs: int | None = None, teacher_logits=None) -> tf.data.Dataset:
    """The one linear builder: source -> (cache) -> shuffle -> seeds -> RGB crop -> RAW sim -> batch -> inputs.

    `teacher_logits` (see `base_examples`; needs `cfg.augment=False` when training): batches are
    ((student_input, teacher_logits), label) for a Distiller with `cached_logits=True`.

    Training with `steps_per_epoch` and `epochs` gives the whole run's batches from global step `start_step` on
    (resumable: see `_epochs_from`); without them, one pass reshuffled on every iteration.
    """
    if mode not in ("distill", "rgb", "raw", "mosaic"):
        raise ValueError(f"unknown mode {mode!r}")
    if teacher_logits is not None:
        if mode != "distill":
            raise ValueError(f"teacher_logits need mode='distill', got {mode!r}")
        if training and cfg.augment:
            raise UserError("cached teacher logits need a deterministic teacher input, but random RGB augmentation "
                            "is on: pass --noaugment with --cached_logits")
        mode = "cached"
    ds = base_examples(source, split, cfg, training, teacher_logits)
    if training and steps_per_epoch and epochs:
        ds = _epochs_from(ds, cfg, steps_per_epoch, start_step, epochs)
    elif training:
        ds = ds.shuffle(cfg.shuffle_buffer, seed=cfg.seed, reshuffle_each_iteration=True)
        ds = _seeds_train(cfg.seed, ds)
    else:
        ds = _seeds_eval(cfg.seed, ds)
    ds = ds.map(functools.partial(prepare_rgb, image_size=cfg.image_size, training=training, augment=cfg.augment),
                num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.map(raw_simulator(cfg), num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.batch(cfg.batch_size, drop_remainder=training, num_parallel_calls=AUTOTUNE, deterministic=True)
    if mode != "mosaic":
        ds = ds.map(functools.partial(to_model_inputs, cfa=cfg.cfa, norm=norm, mode=mode),
                    num_parallel_calls=AUTOTUNE, deterministic=True)
        where = f"{source.name} {split}" + (f", from step {start_step}" if training and epochs else "")
        ds = ds.enumerate().map(functools.partial(check_finite, where=where, batch_size=cfg.batch_size),
                                num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.prefetch(AUTOTUNE)


def check_finite(batch_index, batch, *, where: str, batch_size: int):
    """Fail (naming the batch and the example in pipeline order) if a model input holds NaN/Inf, instead of
    training a silent NaN model. errors.run_main turns the failure into one line."""
    inputs, _ = batch
    rows = [tf.reduce_all(tf.math.is_finite(tf.reshape(x, [tf.shape(x)[0], -1])), axis=1)
            for x in tf.nest.flatten(inputs)]
    finite = tf.reduce_all(tf.stack(rows), axis=0)
    row = tf.argmin(tf.cast(finite, tf.int32), output_type=tf.int64)
    check = tf.debugging.Assert(tf.reduce_all(finite), [
        f"isp_keras: {where}: NaN/Inf in the model input at batch", batch_index, "row", row, "= example",
        batch_index * batch_size + row, "in pipeline order (check the normalisation statistics and that file)"])
    with tf.control_dependencies([check]):
        return tf.nest.map_structure(tf.identity, batch)


def compute_normalisation(source: Source, cfg: PipelineConfig, max_images: int = 10000,
                          rgb_mean=None, rgb_std=None, channel_order: str = "RGB") -> Normalisation:
    """Per-Bayer-site mean/std of the noisy mosaics of the training split (and RGB channel stats if not given)."""
    stats_cfg = dataclasses.replace(cfg, take=min(cfg.take or max_images, max_images), batch_size=500, cache=False)
    ds = build(source, source.train_split, stats_cfg, training=False, norm=None, mode="mosaic")
    raw_m = np.zeros((3, 3))
    rgb_sum = np.zeros(3)
    rgb_sq = np.zeros(3)
    n = 0
    for raw, rgb, _ in ds:
        raw_m += bayer.site_moments(raw, cfg.cfa).numpy()
        rgb64 = rgb.numpy().astype(np.float64).reshape(-1, 3)
        rgb_sum += rgb64.sum(0)
        rgb_sq += (rgb64 ** 2).sum(0)
        n += rgb64.shape[0]
    if n == 0:
        raise UserError(f"{source.name}: the training split is empty")
    raw_mean, raw_std = bayer.moments_to_stats(raw_m)
    if rgb_mean is None:
        mean = rgb_sum / n
        rgb_mean, rgb_std = mean.tolist(), np.sqrt(np.maximum(rgb_sq / n - mean ** 2, 1e-12)).tolist()
    norm = Normalisation([float(v) for v in raw_mean], [float(v) for v in raw_std],
                         [float(v) for v in rgb_mean], [float(v) for v in rgb_std], channel_order)
    return check_normalisation(norm, f"{source.name}: per-site statistics of the training split")


def check_normalisation(norm: Normalisation, where: str) -> Normalisation:
    """Finite statistics with positive standard deviations, or one line naming `where` and the bad value."""
    for name in ("raw_mean", "raw_std", "rgb_mean", "rgb_std"):
        values = np.asarray(getattr(norm, name), np.float64)
        if values.shape != (3,) or not np.all(np.isfinite(values)):
            raise UserError(f"{where}: {name}={getattr(norm, name)} must be 3 finite numbers")
        if name.endswith("std") and not np.all(values > 0):
            raise UserError(f"{where}: {name}={getattr(norm, name)} must be > 0 (constant input images?)")
    return norm


def save_normalisation(path, norm: Normalisation) -> None:
    from isp_keras import fsutil

    fsutil.write_json_atomic(path, norm.to_json())


def load_normalisation(path) -> Normalisation:
    try:
        norm = Normalisation(**json.loads(Path(path).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"{path}: not a normalisation file ({exc})") from None
    return check_normalisation(norm, str(path))


def log_source(source: Source) -> None:
    logging.info("dataset %s: %d classes, splits %s", source.name, len(source.classes), source.counts)
