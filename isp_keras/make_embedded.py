"""Build a records directory (the embedded default in data/, or a full copy for teacher training) from the
CIFAR-10 JPEG archive, without extracting it.

  python -m isp_keras.make_embedded --archive=../shared/datasets/cifar10-jpeg.tar.gz --out=data/embedded \
      --train_per_class=2000 --test_per_class=1000

The JPEG bytes are copied as they are (no re-encoding). Subsets are drawn per class at random with --seed and
the whole split is shuffled, because the archive is grouped by class.
"""

from __future__ import annotations

import random
import tarfile

from absl import app, flags
from tqdm import tqdm

from isp_keras import records
from isp_keras.errors import UserError, run_main

FLAGS = flags.FLAGS
flags.DEFINE_string("archive", "../shared/datasets/cifar10-jpeg.tar.gz", "CIFAR-10 JPEG archive (tar.gz).")
flags.DEFINE_string("out", "data/embedded", "Output records directory.")
flags.DEFINE_integer("train_per_class", 2000, "Training images per class (5000 = all).")
flags.DEFINE_integer("test_per_class", 1000, "Test images per class (1000 = all).")
flags.DEFINE_integer("shards", 2, "Shards per split.")
flags.DEFINE_integer("seed", 0, "Seed for the subset and the shuffle.")


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


def main(argv):
    del argv
    content = read_archive(FLAGS.archive)
    classes = sorted(content["train"])
    rng = random.Random(FLAGS.seed)
    splits = {"train": select(content["train"], classes, FLAGS.train_per_class, rng),
              "test": select(content["test"], classes, FLAGS.test_per_class, rng)}
    index = records.write_records(FLAGS.out, classes, splits, FLAGS.shards, extra={
        "source": f"{FLAGS.archive} (CIFAR-10, Krizhevsky 2009)", "image_size": 32, "seed": FLAGS.seed})
    for split, info in index["splits"].items():
        print(f"{split}: {info['count']} images in {len(info['files'])} shards")
    for split, info in index["splits"].items():
        for name, digest in info["files"].items():
            print(f"sha256 {digest}  {FLAGS.out}/{name}")


if __name__ == "__main__":
    app.run(run_main(main))
