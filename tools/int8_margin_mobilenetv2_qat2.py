"""Where the int8 MobileNetV2 student parts from its Keras model: the export's parity mosaics (Imagenette validation,
seed 0, as `isp_keras.export` draws them) split by the Keras student's top-1 - top-2 probability margin, with the
int8 file's ties (two classes on the same int8 output step), and what the int8 flips cost in agreement with the
teacher (clean RGB) and in top-1 against ground truth. Run from the repository root:
    python tools/int8_margin_mobilenetv2_qat2.py runs/table_mobilenetv2_qat2/distilled_qat \
        runs/export_mobilenetv2_qat2/model_int8.tflite docs/results/int8_margin_mobilenetv2_qat2.json
"""

import json
import sys
import time

import numpy as np
import tensorflow as tf

from isp_keras import fsutil
from isp_keras.data import pipeline
from isp_keras.deploy import parity, runtime, serving
from isp_keras.models import teachers

BINS = {"margin < 0.01": (0.0, 0.01), "0.01-0.05": (0.01, 0.05), "0.05-0.2": (0.05, 0.2), ">= 0.2": (0.2, 1.01)}


def test_set(student: serving.Student, seed: int = 0):
    """(mosaics, clean RGB, labels) of the test split, the mosaics exactly those of the export's parity check."""
    source = serving.labelled_source(student, "student", seed=seed)
    cfg = pipeline.PipelineConfig(
        image_size=student.image_size,
        batch_size=256,
        cfa=student.cfa,
        noise_std=student.noise_std,
        seed=seed,
        cache=False,
    )
    out = ([], [], [])
    for raw, rgb, label in pipeline.build(source, source.test_split, cfg, training=False, norm=None, mode="mosaic"):
        for part, value in zip(out, (raw, rgb, label)):
            part.append(value.numpy())
    return tuple(np.concatenate(part) for part in out)


def teacher_top1(student: serving.Student, rgb: np.ndarray) -> np.ndarray:
    model, _ = teachers.load_teacher(student.teacher)
    fn = tf.function(lambda x: model(pipeline.teacher_input(x, norm=student.norm), training=False))
    return np.concatenate([fn(tf.constant(rgb[i : i + 128])).numpy().argmax(-1) for i in range(0, len(rgb), 128)])


def pct(mask: np.ndarray) -> float:
    return round(float(100.0 * mask.mean()), 2) if mask.size else float("nan")


def main(student_dir: str, int8_file: str, out: str) -> None:
    start = time.time()
    student = serving.load_student(student_dir)
    mosaics, rgb, labels = test_set(student)
    keras_p = parity.keras_probabilities(student, mosaics)
    runner = runtime.TFLiteRunner(int8_file, num_threads=1)
    int8_p = runner.predict(mosaics)
    teacher = teacher_top1(student, rgb)
    top2 = np.sort(keras_p, -1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    k1, q1 = keras_p.argmax(-1), int8_p.argmax(-1)
    flips = k1 != q1
    q_sorted = np.sort(int8_p, -1)
    tied = q_sorted[:, -1] == q_sorted[:, -2]
    keras_second = np.argsort(keras_p, -1)[:, -2]
    bins = {}
    for name, (lo, hi) in BINS.items():
        m = (margin >= lo) & (margin < hi)
        bins[name] = {
            "images": int(m.sum()),
            "int8_top1_agreement": pct(~flips[m]),
            "int8_ties_among_flips": int((flips & tied & m).sum()),
        }
    result = {
        "command": " ".join(["python", *sys.argv]),
        "images": int(len(mosaics)),
        "int8_output_quantisation": {
            "scale": float(runner.output["quantization"][0]),
            "zero_point": int(runner.output["quantization"][1]),
        },
        "int8_top1_agreement_with_keras": pct(~flips),
        "flips": int(flips.sum()),
        "flips_to_keras_second_class": int((flips & (q1 == keras_second)).sum()),
        "flips_where_int8_top2_tied": int((flips & tied).sum()),
        "median_keras_margin_of_flips": round(float(np.median(margin[flips])), 4) if flips.any() else None,
        "by_keras_margin": bins,
        "agreement_with_teacher": {"keras": pct(k1 == teacher), "int8": pct(q1 == teacher)},
        "top1_ground_truth": {"keras": pct(k1 == labels), "int8": pct(q1 == labels)},
        "wall_seconds": round(time.time() - start),
    }
    fsutil.write_json_atomic(out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)  # the usage
    main(*sys.argv[1:])
