"""Build a records directory (the embedded default in data/, or a full copy for teacher training) from the
CIFAR-10 JPEG archive, without extracting it. The JPEG bytes are copied as they are (no re-encoding). Subsets are
drawn per class at random with the seed and the whole split is shuffled, because the archive is grouped by class.
"""

from __future__ import annotations

import random
import tarfile

from tqdm import tqdm

from isp_keras.data import records
from isp_keras.data.config import EmbeddedConfig
from isp_keras.errors import UserError


def read_archive(path):
    """{split: {class: [(member name, bytes), ...]}} from cifar10-jpeg/{split}/{class}/NNNN.jpg."""
    out: dict = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tqdm(tar, desc=f"reading {path}", unit=" files"):
                parts = member.name.split("/")
                if not member.isfile() or len(parts) != 4 or not parts[3].endswith(".jpg"):
                    continue
                _, split, cls, _ = parts
                out.setdefault(split, {}).setdefault(cls, []).append((member.name, tar.extractfile(member).read()))
    except (OSError, tarfile.TarError) as exc:
        raise UserError(f"{path}: cannot read the archive ({exc})") from None
    if not {"train", "test"} <= set(out):
        raise UserError(f"{path}: expected cifar10-jpeg/train and cifar10-jpeg/test inside")
    return out


def select(by_class: dict, classes: list, per_class: int, rng: random.Random) -> list:
    chosen = []
    for label, cls in enumerate(classes):
        files = sorted(by_class.get(cls, []))
        if len(files) < per_class:
            raise UserError(f"class {cls!r} has {len(files)} images, fewer than the {per_class} asked for")
        chosen += [(data, label) for _, data in rng.sample(files, per_class)]
    rng.shuffle(chosen)
    return chosen


def build(cfg: EmbeddedConfig) -> dict:
    """Write the records directory; returns its index (counts and sha256 of every shard)."""
    content = read_archive(cfg.archive)
    classes = sorted(content["train"])
    rng = random.Random(cfg.seed)
    splits = {
        "train": select(content["train"], classes, cfg.train_per_class, rng),
        "test": select(content["test"], classes, cfg.test_per_class, rng),
    }
    return records.write_records(
        cfg.out,
        classes,
        splits,
        cfg.shards,
        extra={"source": f"{cfg.archive} (CIFAR-10, Krizhevsky 2009)", "image_size": 32, "seed": cfg.seed},
    )
