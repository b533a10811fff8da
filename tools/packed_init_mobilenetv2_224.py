"""Packed vs infill MobileNetV2 students at initialisation on Imagenette validation mosaics, 224 px; run from the
repository root with Imagenette under .cache/imagenette (docs/models/packed-students.md):
    python tools/packed_init_mobilenetv2_224.py docs/results/packed_init_mobilenetv2_224.json
"""

import json
import sys
import time

import numpy as np
import tensorflow as tf

from isp_keras.data import pipeline, sources
from isp_keras.models import packed, students, teachers
from isp_keras.raw import bayer

TEACHER = "../shared/models/imagenet-tflite/tf2_mobilenet_v2_1.0_224_ptq.tflite"


def compare(teacher, source, cfa: str, noise: float) -> dict:
    cfg = pipeline.PipelineConfig(image_size=224, batch_size=50, cfa=cfa, noise_std=noise, take=200, cache=False)
    batches = pipeline.build(source, source.test_split, cfg, training=False, norm=None, mode="mosaic")
    raws = np.concatenate([raw.numpy() for raw, _, _ in batches])
    mean, std = bayer.moments_to_stats(bayer.site_moments(tf.constant(raws), cfa))
    packing = packed.Packing(cfa, tuple(mean), tuple(std), "RGB", 224)
    student = students.student_from_teacher(teacher, packing=packing)
    infill, tiles = [], []
    for i in range(0, len(raws), 50):
        raw = tf.constant(raws[i : i + 50])
        infill.append(teacher(bayer.raw_to_input(raw, cfa, mean, std), training=False).numpy())
        tiles.append(student(bayer.pack(raw), training=False).numpy())
    infill, tiles = np.concatenate(infill), np.concatenate(tiles)
    return {
        "top1_agreement": float(np.mean(infill.argmax(-1) == tiles.argmax(-1))),
        "max_abs_logit_diff": float(np.abs(infill - tiles).max()),
        "max_abs_logit": float(np.abs(infill).max()),
    }


def main(out: str) -> None:
    start = time.time()
    teacher, _ = teachers.load_teacher(TEACHER)
    source = sources.get_source("folder:.cache/imagenette")
    result = {"teacher": TEACHER, "data": "folder:.cache/imagenette test split, first 200, 224 px", "per_cfa": {}}
    for noise in (0.1, 0.0):
        for cfa in ("RGGB", "GRBG", "GBRG", "BGGR"):
            result["per_cfa"][f"{cfa} noise {noise}"] = fig = compare(teacher, source, cfa, noise)
            print(cfa, noise, fig, flush=True)
    result["seconds"] = round(time.time() - start, 1)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)  # the usage
    main(sys.argv[1])
