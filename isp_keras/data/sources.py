"""Data sources: `embedded`, `folder:PATH`, `tfds:NAME`, `records:PATH`, one DATASET_KINDS entry each.

A source yields (uint8 RGB image [h, w, 3], int32 label) per split; `pipeline.build` turns it into model inputs.
Unlabelled data (a folder of images without class folders, records without classes, a TFDS set without a label)
yields label UNLABELLED (-1). data/relabel.py maps a labelled source into a teacher's classes by name (Imagenette's
10 WordNet-id folders into an ImageNet teacher's 1001 outputs) and splits a part of the training split off for
tuning.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf
from absl import logging

from isp_keras import console, paths
from isp_keras.data import records
from isp_keras.errors import UserError

EMBEDDED_DIR = paths.EMBEDDED_DATA
AUTOTUNE = tf.data.AUTOTUNE


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
UNLABELLED = -1


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
    labelled: bool = True  # False: every label is UNLABELLED
    # The label-space indices of the classes the data holds (None: all of `classes`), for metrics restricted to them.
    subset: list | None = None

    def split(self, name: str) -> tf.data.Dataset:
        return self.split_fn(name)


def _decode(image_bytes, label):
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    return tf.ensure_shape(image, [None, None, 3]), label


def records_source(path, name=None) -> Source:
    index = records.read_index(path)
    splits = index["splits"]

    def split_fn(split):
        return records.dataset(path, split).map(_decode, num_parallel_calls=tf.data.AUTOTUNE)

    test = "test" if "test" in splits else ("validation" if "validation" in splits else None)
    if "train" not in splits or test is None:
        raise UserError(f"{path}: records need a 'train' and a 'test' (or 'validation') split")
    return Source(
        name or f"records:{path}",
        index["classes"],
        {k: v["count"] for k, v in splits.items()},
        index.get("image_size"),
        split_fn,
        "train",
        test,
        labelled=bool(index["classes"]),
    )


def _mixed(files: list, labels: list) -> tuple[list, list]:
    order = np.random.default_rng(0).permutation(len(files))
    return [files[i] for i in order], [labels[i] for i in order]


ANNOTATIONS = "val_annotations.txt"


def _list_annotated(root: Path):
    """Tiny-ImageNet's validation layout: ROOT/images/* labelled by ROOT/val_annotations.txt (file, class, box)."""
    files, names = [], []
    for number, line in enumerate((root / ANNOTATIONS).read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2 or not parts[0] or not parts[1]:
            raise UserError(f"{root / ANNOTATIONS}:{number}: expected 'FILE<TAB>CLASS[<TAB>box]', got {line[:80]!r}")
        image = root / "images" / parts[0]
        if not image.is_file():
            raise UserError(f"{root / ANNOTATIONS}:{number}: {image} does not exist")
        files.append(str(image))
        names.append(parts[1])
    classes = sorted(set(names))
    index = {c: i for i, c in enumerate(classes)}
    return classes, files, [index[n] for n in names]


def _list_folder(root: Path):
    """(classes, files, labels) of class sub-folders (or of Tiny-ImageNet's annotated validation folder); a folder
    of images without sub-folders is unlabelled: ([], files, [UNLABELLED] * n)."""
    if (root / ANNOTATIONS).is_file():
        return _list_annotated(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes == ["images"]:
        raise UserError(
            f"{root}: holds only images/ (Tiny-ImageNet's validation layout) but no {ANNOTATIONS} to label them"
        )
    if not classes:
        files = sorted(str(f) for f in root.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
        return [], files, [UNLABELLED] * len(files)
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
        return (
            f"not a readable image ({type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''})",
            "",
            (0, 0),
        )
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
        notes.append(
            f"{where}: converting {len(gray)} 1-channel (grayscale) image(s) to RGB by repeating the "
            f"channel, e.g. {gray[0]}"
        )
    if alpha:
        notes.append(
            f"{where}: dropping the alpha channel of {len(alpha)} 4-channel image(s) (RGB kept, not "
            f"composited), e.g. {alpha[0]}"
        )
    if odd:
        notes.append(
            f"{where}: {len(odd)} image(s) of odd width or height, e.g. {odd[0]}: the pipeline crops and "
            f"resizes every image to the even --image_size, as the 2x2 Bayer pattern needs"
        )
    for note in notes:
        logging.warning("%s", note)
    return keep_files, keep_labels, notes


def per_class_subset(files: list, labels: list, classes: list, count: int, where: str) -> tuple[list, list]:
    """`count` files of every class, drawn with a fixed seed (the same images whatever --seed), in listing order."""
    rng = np.random.default_rng(20_261_206)
    labels_arr = np.asarray(labels)
    keep = []
    for label, name in enumerate(classes):
        members = np.flatnonzero(labels_arr == label)
        if len(members) < count:
            raise UserError(f"{where}: class {name} holds {len(members)} images, fewer than the {count} asked for")
        keep.extend(rng.choice(members, count, replace=False).tolist())
    keep.sort()
    return [files[i] for i in keep], [labels[i] for i in keep]


def folder_source(
    path, test_fraction: float = 0.2, seed: int = 0, strict: bool = False, per_class: dict | None = None
) -> Source:
    """Class sub-folders; either PATH/{train,test|val}/<class>/... or PATH/<class>/... split by --seed. Images
    without class folders (PATH/*.jpg, or PATH/{train,test}/*.jpg) are unlabelled data. A split folder with
    `val_annotations.txt` and `images/` (Tiny-ImageNet's validation set) is labelled by that file.

    `per_class` ({split: count}, e.g. from --train_per_class): keep that many images of every class (a seeded
    draw, the same for every --seed). Unreadable files are skipped with a count (or stop the run with `strict`);
    see `scan_images`.
    """
    root = Path(path)
    if not root.is_dir():
        raise UserError(f"--dataset=folder:{path}: not a directory")
    test_dir = next((root / d for d in ("test", "val", "validation") if (root / d).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        classes, train_files, train_labels = _list_folder(root / "train")
        test_classes, test_files, test_labels = _list_folder(test_dir)
        if test_classes != classes:
            only = sorted(set(test_classes) ^ set(classes))
            raise UserError(
                f"{test_dir}: its classes differ from {root / 'train'}'s ({len(test_classes)} against "
                f"{len(classes)}; in one only: {', '.join(only[:5])}{' ...' if len(only) > 5 else ''})"
            )
        parts = {"train": (train_files, train_labels), "test": (test_files, test_labels)}
    else:
        classes, files, labels = _list_folder(root)
        order = np.random.default_rng(seed).permutation(len(files))
        n_test = int(round(len(files) * test_fraction))
        test_idx, train_idx = order[:n_test], order[n_test:]
        parts = {
            "train": ([files[i] for i in train_idx], [labels[i] for i in train_idx]),
            "test": ([files[i] for i in test_idx], [labels[i] for i in test_idx]),
        }
    if len(classes) == 1:
        raise UserError(
            f"--dataset=folder:{path}: found 1 class sub-folder ({classes[0]}); need at least 2, or none (unlabelled)"
        )
    notes = []
    for split, count in (per_class or {}).items():
        if not count:
            continue
        if not classes:
            raise UserError(f"--{split}_per_class={count}: folder:{path} has no class folders (unlabelled)")
        files, labels = parts[split]
        parts[split] = per_class_subset(files, labels, classes, count, f"--{split}_per_class={count}: folder:{path}")
        notes.append(f"folder:{path} ({split}): {count} images of each of its {len(classes)} classes")
    for split, (files, labels) in list(parts.items()):
        files, labels, split_notes = scan_images(files, labels, f"folder:{path} ({split})", strict)
        # Listed class by class: mixed once (fixed, whatever --seed) so that a first-N slice spans the classes.
        parts[split] = _mixed(files, labels)
        notes += split_notes
        if not files:
            raise UserError(
                f"--dataset=folder:{path}: no readable images ({', '.join(IMAGE_EXTENSIONS)}) in the {split} split"
            )

    def split_fn(split):
        files, labels = parts[split]
        ds = tf.data.Dataset.from_tensor_slices((files, np.asarray(labels, np.int32)))
        ds = ds.map(lambda f, y: _decode(tf.io.read_file(f), y), num_parallel_calls=tf.data.AUTOTUNE)
        # A file whose header reads but whose data is corrupt: skipped (TF logs it) unless --strict.
        return ds if strict else ds.ignore_errors(log_warning=True)

    counts = {k: len(v[0]) for k, v in parts.items()}
    if not classes:
        notes.append(f"folder:{path}: no class folders, so unlabelled ({counts['train']} train, {counts['test']} test)")
        console.progress(notes[-1])
    return Source(f"folder:{path}", classes, counts, None, split_fn, notes=notes, labelled=bool(classes))


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
            raise UserError(
                f"--dataset=tfds:{name}: not prepared in {builder.data_dir} and could not be "
                f"downloaded ({type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})"
            ) from None
    info = builder.info
    if "image" not in info.features:
        raise UserError(f"--dataset=tfds:{name}: needs an 'image' feature")
    labelled = "label" in info.features
    splits = set(info.splits)
    test = "test" if "test" in splits else "validation"
    if "train" not in splits or test not in splits:
        raise UserError(f"--dataset=tfds:{name}: needs a train and a test/validation split")

    def split_fn(split):
        ds = builder.as_dataset(split=split, shuffle_files=False, read_config=tfds.ReadConfig(try_autocache=False))
        return ds.map(
            lambda ex: (_as_rgb(ex["image"]), tf.cast(ex["label"], tf.int32) if labelled else tf.constant(UNLABELLED)),
            num_parallel_calls=tf.data.AUTOTUNE,
        )

    shape = info.features["image"].shape
    native = shape[0] if shape and shape[0] == shape[1] and shape[0] is not None else None
    notes = []
    if shape and shape[-1] in (1, 4):
        notes.append(
            f"--dataset=tfds:{name}: {shape[-1]}-channel images; "
            + ("repeating the channel to RGB" if shape[-1] == 1 else "dropping the alpha channel (RGB kept)")
        )
        logging.warning("%s", notes[-1])
    return Source(
        f"tfds:{name}",
        list(info.features["label"].names) if labelled else [],
        {s: info.splits[s].num_examples for s in splits},
        native,
        split_fn,
        "train",
        test,
        notes=notes,
        labelled=labelled,
    )


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
        raise UserError(
            f"{what}: not prepared in {data_dir} and there is no network to download it "
            f"({host}: {reason}); prepare it where you are online (`tfds build`) "
            f"and copy the data dir"
        ) from None
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


@dataclasses.dataclass(frozen=True)
class DatasetKind:
    """One `--dataset` kind: how its argument opens a Source, whether it has labels and what it is (the dry run's
    line: description, training images, classes; None where unknown) without reading any image."""

    name: str
    usage: str
    open: Callable  # (arg, seed, strict, per_class) -> Source
    labelled: Callable  # (arg) -> bool
    describe: Callable  # (arg) -> (str, int | None, int | None)


def _records_described(path, name: str) -> tuple:
    index = records.read_index(path)
    counts = {k: v["count"] for k, v in index["splits"].items()}
    return f"{name} ({counts})", counts.get("train"), len(index["classes"])


def _open_embedded(arg, seed, strict, per_class) -> Source:
    if not (EMBEDDED_DIR / "index.json").exists():
        raise UserError(f"--dataset=embedded: {EMBEDDED_DIR} is missing; see BUILD_NOTES.md to rebuild it")
    return records_source(EMBEDDED_DIR, name="embedded")


def _folder_labelled(arg: str) -> bool:
    root = Path(arg)
    if not root.is_dir():
        raise UserError(f"--dataset=folder:{arg}: not a directory")
    split = root / "train" if (root / "train").is_dir() else root
    return any(p.is_dir() and not p.name.startswith(".") for p in split.iterdir())


def _folder_described(arg: str) -> tuple:
    if not Path(arg).is_dir():
        return f"image folder {arg} (not present here; a real run needs it)", None, None
    return f"image folder {arg}", None, None


DATASET_KINDS = {
    kind.name: kind
    for kind in (
        DatasetKind(
            "embedded",
            "embedded",
            _open_embedded,
            lambda arg: True,
            lambda arg: _records_described(EMBEDDED_DIR, "embedded"),
        ),
        DatasetKind(
            "folder",
            "folder:PATH",
            lambda arg, seed, strict, per_class: folder_source(arg, seed=seed, strict=strict, per_class=per_class),
            _folder_labelled,
            _folder_described,
        ),
        DatasetKind(
            "tfds",
            "tfds:NAME",
            lambda arg, seed, strict, per_class: tfds_source(arg),
            lambda arg: bool(tfds_source(arg).labelled),
            lambda arg: (f"TFDS {arg} (prepared locally; ILSVRC needs its manual download)", None, None),
        ),
        DatasetKind(
            "records",
            "records:PATH",
            lambda arg, seed, strict, per_class: records_source(arg),
            lambda arg: bool(records.read_index(arg)["classes"]),
            lambda arg: _records_described(arg, f"records:{arg}"),
        ),
    )
}


def dataset_kind(spec: str) -> tuple[DatasetKind, str]:
    """(its kind, its argument) of `--dataset=spec`; one line listing the kinds when it is none of them."""
    name, sep, arg = spec.partition(":")
    kind = DATASET_KINDS.get(name)
    if kind is None or bool(sep and arg) != (":" in kind.usage):
        *first, last = (k.usage for k in DATASET_KINDS.values())
        raise UserError(f"--dataset: unknown dataset {spec!r}; use {', '.join(first)} or {last}")
    return kind, arg


def is_labelled(spec: str) -> bool:
    """Whether `--dataset=spec` has labels, from its index, folder layout or TFDS features (no image is read)."""
    kind, arg = dataset_kind(spec)
    return kind.labelled(arg)


def describe(spec: str) -> tuple:
    """(description, training images or None, classes or None) of `--dataset=spec`, reading no image."""
    kind, arg = dataset_kind(spec)
    return kind.describe(arg)


def get_source(spec: str, seed: int = 0, strict: bool = False, per_class: dict | None = None) -> Source:
    """The Source of `--dataset=spec` (see DATASET_KINDS). `strict`: stop at unreadable folder images.
    `per_class` ({split: count}): a class-balanced subset of a folder's splits (see folder_source)."""
    kind, arg = dataset_kind(spec)
    asked = {k: v for k, v in (per_class or {}).items() if v}
    if asked and kind.name != "folder":
        split, count = next(iter(asked.items()))
        raise UserError(f"--{split}_per_class={count}: only for --dataset=folder:PATH (got --dataset={spec})")
    return kind.open(arg, seed, strict, asked)
