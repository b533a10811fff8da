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

from isp_keras import bayer, records
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


def folder_source(path, test_fraction: float = 0.2, seed: int = 0) -> Source:
    """Class sub-folders; either PATH/{train,test|val}/<class>/... or PATH/<class>/... split by --seed."""
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
    for split, (files, _) in parts.items():
        if not files:
            raise UserError(f"--dataset=folder:{path}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the {split} split")

    def split_fn(split):
        files, labels = parts[split]
        ds = tf.data.Dataset.from_tensor_slices((files, np.asarray(labels, np.int32)))
        return ds.map(lambda f, y: _decode(tf.io.read_file(f), y), num_parallel_calls=AUTOTUNE)

    return Source(f"folder:{path}", classes, {k: len(v[0]) for k, v in parts.items()}, None, split_fn)


def tfds_source(name: str, data_dir: str | None = None) -> Source:
    """A TFDS dataset that is already prepared locally (or can be downloaded, when online)."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as exc:
        raise UserError(f"--dataset=tfds:{name}: unknown TFDS dataset ({str(exc).splitlines()[0][:160]})") from None
    if not builder.is_prepared():
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
    return Source(f"tfds:{name}", list(info.features["label"].names), {s: info.splits[s].num_examples for s in splits},
                  native, split_fn, "train", test)


def _as_rgb(image):
    image = tf.convert_to_tensor(image)
    channels = image.shape[-1]
    if channels == 1:
        return tf.image.grayscale_to_rgb(image)
    if channels == 4:
        return image[..., :3]
    return image


def get_source(spec: str, seed: int = 0) -> Source:
    """`embedded`, `folder:PATH`, `tfds:NAME` or `records:PATH`."""
    if spec == "embedded":
        if not (EMBEDDED_DIR / "index.json").exists():
            raise UserError(f"--dataset=embedded: {EMBEDDED_DIR} is missing; see BUILD_NOTES.md to rebuild it")
        return records_source(EMBEDDED_DIR, name="embedded")
    kind, _, arg = spec.partition(":")
    if kind == "folder" and arg:
        return folder_source(arg, seed=seed)
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


def _seeds_eval(seed: int, ds: tf.data.Dataset) -> tf.data.Dataset:
    """Per-example seeds fixed by the example's position: the same noise on every evaluation."""
    return ds.enumerate().map(lambda i, ex: (ex, tf.stack([tf.constant(seed, tf.int64) + 7919, i])))


def prepare_rgb(example, seed, *, image_size: int, training: bool):
    """uint8 image -> float32 [0,1] RGB of image_size x image_size (augmented when training)."""
    image, label = example
    crop_seed, flip_seed, noise_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    image = tf.image.convert_image_dtype(image, tf.float32)
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    if training:
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


def base_examples(source: Source, split: str, cfg: PipelineConfig, training: bool) -> tf.data.Dataset:
    """Decoded (image, label) of a split, optionally cut to `take` examples drawn at random (seeded)."""
    ds = source.split(split)
    if cfg.take:
        # The embedded set and records are shuffled at build time, so the first N span all classes.
        ds = ds.take(cfg.take)
    if cfg.cache:
        ds = ds.cache()
    return ds


def build(source: Source, split: str, cfg: PipelineConfig, *, training: bool, norm: Normalisation | None,
          mode: str = "distill") -> tf.data.Dataset:
    """The one linear builder: source -> (cache) -> shuffle -> seeds -> RGB crop -> RAW sim -> batch -> inputs."""
    if mode not in ("distill", "rgb", "raw", "mosaic"):
        raise ValueError(f"unknown mode {mode!r}")
    ds = base_examples(source, split, cfg, training)
    if training:
        ds = ds.shuffle(cfg.shuffle_buffer, seed=cfg.seed, reshuffle_each_iteration=True)
        ds = _seeds_train(cfg.seed, ds)
    else:
        ds = _seeds_eval(cfg.seed, ds)
    ds = ds.map(functools.partial(prepare_rgb, image_size=cfg.image_size, training=training),
                num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.map(functools.partial(simulate_raw, cfa=cfg.cfa, noise_std=cfg.noise_std),
                num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.batch(cfg.batch_size, drop_remainder=training, num_parallel_calls=AUTOTUNE, deterministic=True)
    if mode != "mosaic":
        ds = ds.map(functools.partial(to_model_inputs, cfa=cfg.cfa, norm=norm, mode=mode),
                    num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.prefetch(AUTOTUNE)


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
    return Normalisation([float(v) for v in raw_mean], [float(v) for v in raw_std],
                         [float(v) for v in rgb_mean], [float(v) for v in rgb_std], channel_order)


def save_normalisation(path, norm: Normalisation) -> None:
    from isp_keras import fsutil

    fsutil.write_json_atomic(path, norm.to_json())


def load_normalisation(path) -> Normalisation:
    try:
        return Normalisation(**json.loads(Path(path).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"{path}: not a normalisation file ({exc})") from None


def log_source(source: Source) -> None:
    logging.info("dataset %s: %d classes, splits %s", source.name, len(source.classes), source.counts)
