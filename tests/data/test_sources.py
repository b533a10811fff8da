"""Sources: labels mapped into a teacher's classes by name, unlabelled data, the held-out part of the training split."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from isp_keras.data import convert, relabel, sources
from isp_keras.errors import UserError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
IMAGENETTE = FIXTURES / "imagenette"
SYNSETS = FIXTURES / "imagenet" / "imagenet_synsets.txt"
# Imagenette's classes as 0-based ImageNet-1k indices (its README); +1 in the 1001-output TFLite models.
IMAGENETTE_INDICES = [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]


def _png(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)


def _labels(source: sources.Source, split: str) -> list[int]:
    return sorted(int(y) for _, y in source.split(split).as_numpy_iterator())


def imagenet_outputs() -> tuple[list, list]:
    wnids = ["background", *SYNSETS.read_text().split()]
    names = [line for line in (FIXTURES / "imagenet" / "imagenet_labels.txt").read_text().splitlines() if line]
    return names, wnids


def test_imagenette_folders_map_by_wordnet_id_into_the_1001_outputs():
    names, wnids = imagenet_outputs()
    source = sources.folder_source(IMAGENETTE)
    mapped = relabel.in_label_space(source, names, wnids, what="the teacher")
    assert mapped.classes == names and mapped.subset == [i + 1 for i in IMAGENETTE_INDICES]
    assert mapped.counts == source.counts and mapped.labelled
    assert _labels(mapped, "train") == sorted([i + 1 for i in IMAGENETTE_INDICES] * 3)
    assert _labels(mapped, "test") == sorted([i + 1 for i in IMAGENETTE_INDICES] * 2)
    assert "mapped by name" in mapped.notes[-1]
    # The same data against a model whose class names are the wnids themselves (no separate wnid list).
    assert relabel.in_label_space(source, wnids).subset == mapped.subset


def test_classes_matching_nothing_are_one_error_listing_them():
    names, wnids = imagenet_outputs()
    source = sources.folder_source(IMAGENETTE)
    odd = source.classes[:8] + ["n99999999", "kitten"]
    with pytest.raises(UserError) as info:
        relabel.in_label_space(dataclasses.replace(source, classes=odd), names, wnids, "T")
    assert str(info.value) == (
        f"folder:{IMAGENETTE}: 2 of its 10 classes match no class of T (1001 outputs; matched by WordNet id or "
        "name): n99999999, kitten"
    )


def test_same_count_and_no_name_in_common_is_taken_index_for_index():
    source = sources.folder_source(IMAGENETTE)
    same = relabel.in_label_space(source, [f"c{i}" for i in range(10)])
    assert same is source and same.subset is None


def test_folder_of_images_without_class_folders_is_unlabelled(tmp_path):
    for i in range(10):
        _png(tmp_path / "flat" / f"{i}.png", i)
    assert not sources.is_labelled(f"folder:{tmp_path / 'flat'}")
    source = sources.get_source(f"folder:{tmp_path / 'flat'}")
    assert not source.labelled and source.classes == [] and source.counts == {"train": 8, "test": 2}
    assert set(_labels(source, "train")) == {sources.UNLABELLED}
    mapped = relabel.in_label_space(source, ["a", "b", "c"])
    assert mapped.classes == ["a", "b", "c"] and not mapped.labelled and mapped.subset is None
    # The split layout without class folders, and records written from it, are unlabelled too.
    for split, n in (("train", 3), ("test", 2)):
        for i in range(n):
            _png(tmp_path / "split" / split / f"{i}.png", 10 + i)
    assert not sources.is_labelled(f"folder:{tmp_path / 'split'}")
    index = convert.write(f"folder:{tmp_path / 'split'}", tmp_path / "rec", progress=False)
    assert index["classes"] == [] and index["splits"]["train"]["count"] == 3
    records = sources.get_source(f"records:{tmp_path / 'rec'}")
    assert not records.labelled and _labels(records, "test") == [sources.UNLABELLED] * 2
    assert sources.is_labelled(f"folder:{IMAGENETTE}") and sources.is_labelled("embedded")


def test_one_class_folder_is_an_error(tmp_path):
    _png(tmp_path / "one" / "cat" / "0.png", 0)
    with pytest.raises(UserError, match=r"found 1 class sub-folder \(cat\); need at least 2, or none"):
        sources.folder_source(tmp_path / "one")


def test_holdout_splits_the_training_split_only_and_disjointly():
    source = sources.folder_source(IMAGENETTE)
    held = relabel.holdout(source, 0.2, seed=3)
    assert held.counts == {"train": 24, "holdout": 6} and held.test_split == "holdout"
    train = [x.tobytes() for x, _ in held.split("train").as_numpy_iterator()]
    out = [x.tobytes() for x, _ in held.split("holdout").as_numpy_iterator()]
    every = [x.tobytes() for x, _ in source.split("train").as_numpy_iterator()]
    assert len(train) == 24 and len(out) == 6 and not set(train) & set(out) and sorted(train + out) == sorted(every)
    again = [x.tobytes() for x, _ in relabel.holdout(source, 0.2, seed=3).split("holdout").as_numpy_iterator()]
    other = [x.tobytes() for x, _ in relabel.holdout(source, 0.2, seed=4).split("holdout").as_numpy_iterator()]
    assert again == out and other != out
    with pytest.raises(UserError, match=r"--holdout_fraction=0.01: leaves 0 of 30 training images"):
        relabel.holdout(source, 0.01, seed=0)


def test_folder_order_is_mixed_so_a_first_n_slice_spans_classes():
    labels = [int(y) for _, y in sources.folder_source(IMAGENETTE).split("train").take(10).as_numpy_iterator()]
    assert len(set(labels)) >= 5


def test_tfds_without_a_label_is_unlabelled_and_with_wnid_names_maps(tmp_path):
    import tensorflow_datasets as tfds

    class TinyUnlabelled(tfds.core.GeneratorBasedBuilder):
        """4x4 images with no label feature (TinyWnids adds one, its classes named by WordNet id)."""

        VERSION = tfds.core.Version("1.0.0")
        labelled = False

        def _info(self):
            features = {"image": tfds.features.Image(shape=(4, 4, 3))}
            if self.labelled:
                features["label"] = tfds.features.ClassLabel(names=["n02102040", "n01440764"])
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(4), "test": self._generate_examples(2)}

        def _generate_examples(self, n):
            for i in range(n):
                example = {"image": np.full((4, 4, 3), 9 * i, np.uint8)}
                yield i, {**example, "label": i % 2} if self.labelled else example

    class TinyWnids(TinyUnlabelled):
        labelled = True

    for builder in (TinyUnlabelled, TinyWnids):
        builder(data_dir=str(tmp_path)).download_and_prepare()
    plain = sources.tfds_source("tiny_unlabelled", data_dir=str(tmp_path))
    assert not plain.labelled and plain.classes == [] and _labels(plain, "train") == [sources.UNLABELLED] * 4
    named = sources.tfds_source("tiny_wnids", data_dir=str(tmp_path))
    names, wnids = imagenet_outputs()
    mapped = relabel.in_label_space(named, names, wnids)
    assert mapped.subset == [218, 1] and _labels(mapped, "train") == [1, 1, 218, 218]


def _tiny_imagenet(root: Path, annotations: bool = True) -> None:
    """Tiny-ImageNet's layout in miniature: train/<wnid>/images/*, val/images/* labelled by val_annotations.txt."""
    wnids = ["n01443537", "n01629819", "n01641577"]
    for c, wnid in enumerate(wnids):
        for i in range(3):
            _png(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", c * 10 + i)
    lines = []
    (root / "val" / "images").mkdir(parents=True)
    for i in range(6):  # a flat grey of level 20 + 40 i, to tell the images apart after JPEG
        Image.new("RGB", (8, 8), (20 + 40 * i,) * 3).save(root / "val" / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{wnids[i % 3]}\t0\t0\t7\t7")
    if annotations:
        (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


def test_tiny_imagenet_validation_is_labelled_by_its_annotations_file(tmp_path):
    _tiny_imagenet(tmp_path)
    source = sources.folder_source(tmp_path)
    assert source.classes == ["n01443537", "n01629819", "n01641577"] and source.counts == {"train": 9, "test": 6}
    found = sorted(
        (round((float(image.mean()) - 20) / 40), int(label))
        for image, label in source.split("test").as_numpy_iterator()
    )
    assert found == [(i, i % 3) for i in range(6)]
    names, wnids = imagenet_outputs()
    mapped = relabel.in_label_space(source, names, wnids)
    assert mapped.subset == [2, 26, 31]  # goldfish, European fire salamander, bullfrog among the 1001 outputs


def test_tiny_imagenet_validation_without_annotations_is_one_error(tmp_path):
    _tiny_imagenet(tmp_path, annotations=False)
    with pytest.raises(UserError, match=r"val: holds only images/ .* no val_annotations.txt"):
        sources.folder_source(tmp_path)


def test_annotations_naming_a_missing_image_are_one_error(tmp_path):
    _tiny_imagenet(tmp_path)
    (tmp_path / "val" / "images" / "val_2.JPEG").unlink()
    with pytest.raises(UserError, match=r"val_annotations.txt:3: .*val_2.JPEG does not exist"):
        sources.folder_source(tmp_path)


def test_per_class_cap_is_balanced_seeded_and_the_same_for_every_seed():
    source = sources.get_source(f"folder:{IMAGENETTE}", seed=0, per_class={"train": 2, "test": 1})
    assert source.counts == {"train": 20, "test": 10}
    train = _labels(source, "train")
    assert train == sorted(list(range(10)) * 2)
    other = sources.get_source(f"folder:{IMAGENETTE}", seed=5, per_class={"train": 2, "test": 1})

    def pixels(s):
        return sorted(float(image.mean()) for image, _ in s.split("train").as_numpy_iterator())

    assert pixels(source) == pixels(other)
    full = sources.get_source(f"folder:{IMAGENETTE}", per_class={"train": 3})
    assert full.counts == {"train": 30, "test": 20}


def test_per_class_cap_beyond_a_class_or_off_a_folder_is_one_error():
    with pytest.raises(UserError, match=r"--train_per_class=4: folder:.*imagenette: class n01440764 holds 3 images"):
        sources.get_source(f"folder:{IMAGENETTE}", per_class={"train": 4})
    with pytest.raises(UserError, match=r"--test_per_class=2: only for --dataset=folder:PATH \(got --dataset=embedded"):
        sources.get_source("embedded", per_class={"test": 2})


def test_every_dataset_kind_parses_describes_and_refuses_in_one_place():
    assert list(sources.DATASET_KINDS) == ["embedded", "folder", "tfds", "records"]
    kind, arg = sources.dataset_kind(f"folder:{IMAGENETTE}")
    assert (kind.name, arg) == ("folder", str(IMAGENETTE)) and sources.is_labelled(f"folder:{IMAGENETTE}")
    assert sources.describe("embedded") == ("embedded ({'train': 20000, 'test': 10000})", 20000, 10)
    assert sources.describe("folder:/no/such")[0] == "image folder /no/such (not present here; a real run needs it)"
    for bad in ("nosuch", "folder:", "embedded:x", "records"):
        with pytest.raises(UserError) as info:
            sources.dataset_kind(bad)
        assert str(info.value) == (
            f"--dataset: unknown dataset {bad!r}; use embedded, folder:PATH, tfds:NAME or records:PATH"
        )
