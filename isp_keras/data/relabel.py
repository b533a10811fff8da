"""A source seen through a model or a tuning split: its labels re-indexed into a teacher's outputs by WordNet id or
class name (`in_label_space`), and the training split cut into train and held-out parts (`holdout`)."""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf
from absl import logging

from isp_keras import console
from isp_keras.data.sources import AUTOTUNE, Source
from isp_keras.errors import UserError


def in_label_space(source: Source, classes: list, wnids: list | None = None, what: str = "the teacher") -> Source:
    """`source` with its labels in the index space of `classes` (a model's outputs).

    Each data class is matched by name to an output's WordNet id (`wnids`, where known) or class name, so a
    dataset of a subset of the model's classes (Imagenette's wnid folders of ImageNet's 1000) is evaluated over
    the model's full label set, with `subset` listing its own classes for restricted metrics. A dataset whose
    class names match none is taken index for index when the counts agree (a warning says so); otherwise the
    unmatched names are one error."""
    classes = [str(c) for c in classes]
    if not source.labelled:
        return dataclasses.replace(source, classes=classes)
    names = [str(c) for c in source.classes]
    if names == classes:
        return source
    lookup = {name: i for i, name in enumerate(classes)}
    if wnids:
        lookup.update({w: i for i, w in enumerate(wnids) if w})
    missing = [n for n in names if n not in lookup]
    if missing and len(missing) == len(names) and len(names) == len(classes):
        logging.warning(
            "%s: class names %s match none of %s's %s; matching by index", source.name, names[:5], what, classes[:5]
        )
        return source
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        raise UserError(
            f"{source.name}: {len(missing)} of its {len(names)} classes match no class of {what} "
            f"({len(classes)} outputs; matched by WordNet id or name): {shown}"
        )
    table = np.asarray([lookup[n] for n in names], np.int32)
    inner = source.split_fn

    def split_fn(split):
        return inner(split).map(lambda image, label: (image, tf.gather(table, label)), num_parallel_calls=AUTOTUNE)

    note = f"{source.name}: its {len(names)} classes mapped by name into {what}'s {len(classes)} outputs"
    console.progress(note)
    return dataclasses.replace(
        source, classes=classes, split_fn=split_fn, subset=table.tolist(), notes=[*source.notes, note]
    )


def holdout(source: Source, fraction: float, seed: int) -> Source:
    """The training split cut in two by a seeded draw: `train` keeps 1 - fraction, `test` is the rest (for tuning
    on training data only; the real test split is never read)."""
    n = source.counts[source.train_split]
    n_hold = int(round(n * fraction))
    if not 0 < n_hold < n:
        raise UserError(f"--holdout_fraction={fraction}: leaves {n_hold} of {n} training images to tune on")
    held = np.zeros(n, bool)
    held[np.random.default_rng(seed + 104_729).permutation(n)[:n_hold]] = True
    mask = tf.constant(held)
    inner, train = source.split_fn, source.train_split

    def split_fn(split):
        want = split == "holdout"
        ds = inner(train).enumerate().filter(lambda i, ex: tf.equal(mask[i], want))
        return ds.map(lambda i, ex: ex)

    return dataclasses.replace(
        source,
        name=f"{source.name} (training split: {n - n_hold} train / {n_hold} held out)",
        counts={"train": n - n_hold, "holdout": n_hold},
        split_fn=split_fn,
        train_split="train",
        test_split="holdout",
    )
