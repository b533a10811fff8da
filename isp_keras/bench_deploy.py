"""Deployment benchmark (`python -m isp_keras.benchmark --suite=deploy --student=RUN_DIR --json=PATH`).

Latency (median of --runs single-image calls after --warmup, --threads threads) and size of the Keras student
(the serving graph as a tf.function), float32 / dynamic-range / full-int8 TFLite on LiteRT; int8 top-1 agreement
with Keras on the test split; and end to end on the same DNG bytes:
  RAW path: LibRaw decode -> uint16 counts -> float32 TFLite (levels + bayer infill + norm + student, one graph)
  ISP path: LibRaw decode + LibRaw ISP (rawpy.postprocess: AHD demosaic, colour matrix, 8-bit) -> float32 TFLite
            (teacher normalisation + teacher, one graph) - the same architecture, so the same model size.
Then the same for MobileNetV2 at 224 px with random weights (latency and size only; accuracy is meaningless).
"""

from __future__ import annotations

import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from absl import flags, logging

from isp_keras import datasets, models, rawio, serving
from isp_keras.errors import UserError

# The simulated sensor records sRGB-encoded values (datasets.simulate_raw mosaics the RGB image directly), so the
# matching ISP is demosaic + identity colour + gamma 1 + no auto-brightening; the DNGs carry sRGB primaries.
ISP_PARAMS = dict(gamma=(1, 1), no_auto_bright=True, use_camera_wb=False, user_wb=[1.0, 1.0, 1.0, 1.0],
                  output_bps=8)
BLACK_LEVEL, WHITE_LEVEL = 256, 4095  # a 12-bit sensor


def define_flags(flag_values=flags.FLAGS) -> None:
    fv = flag_values
    flags.DEFINE_string("student", "runs/default", "Run directory of the student to benchmark (deploy suite).",
                        flag_values=fv)
    flags.DEFINE_integer("runs", 300, "Timed single-image calls per latency figure (deploy suite).", flag_values=fv)
    flags.DEFINE_integer("warmup", 30, "Untimed calls before timing (deploy suite).", flag_values=fv)
    flags.DEFINE_integer("threads", 2, "Threads for LiteRT and TensorFlow (deploy suite).", flag_values=fv)
    flags.DEFINE_integer("agreement_take", 0, "Test mosaics for the int8 agreement (0: the whole test split).",
                         flag_values=fv)
    flags.DEFINE_integer("calibration_samples", 300, "Training-pipeline mosaics calibrating the int8 model.",
                         flag_values=fv)
    flags.DEFINE_integer("e2e_images", 50, "Distinct DNGs cycled through in the end-to-end timings.", flag_values=fv)
    flags.DEFINE_boolean("mobilenet", True, "Also benchmark MobileNetV2 at 224 px (random weights).", flag_values=fv)


def median_ms(fn, runs: int, warmup: int) -> float:
    for i in range(warmup):
        fn(i)
    times = []
    for i in range(runs):
        start = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def teacher_fn(teacher, norm: datasets.Normalisation):
    """uint8 RGB [batch, H, W, 3] (an ISP's output) -> probabilities, with the teacher's input normalisation."""

    def serve(rgb):
        x = datasets.teacher_input(tf.image.convert_image_dtype(rgb, tf.float32), norm=norm)
        return {serving.OUTPUT_NAME: tf.nn.softmax(teacher(x, training=False), axis=-1)}

    return serve


def write_dngs(mosaics: np.ndarray, cfa: str, folder: Path) -> list[bytes]:
    """The test mosaics as 12-bit DNGs (clipped to the sensor range, as a real sensor would); their bytes."""
    out = []
    for i, mosaic in enumerate(mosaics[..., 0]):
        counts = np.round(BLACK_LEVEL + np.clip(mosaic, 0.0, 1.0) * (WHITE_LEVEL - BLACK_LEVEL)).astype(np.uint16)
        path = folder / f"e2e_{i:04d}.dng"
        rawio.write_dng(path, counts, cfa, BLACK_LEVEL, WHITE_LEVEL)
        out.append(path.read_bytes())
    return out


def measure(student: serving.Student, teacher, source, work: Path, opts, keras_path: Path, agreement: bool,
            calibration_samples: int) -> dict:
    """All figures of one student/teacher pair; files go to `work`. `agreement`: also int8/float vs Keras
    on the test split (--agreement_take) and the top-1 of both end-to-end paths."""
    import rawpy

    fig = {"image_size": student.image_size, "params": models.param_count(student.model)}
    size = student.image_size
    sm_dir, teacher_dir = work / "student_savedmodel", work / "teacher_savedmodel"
    serving.export_saved_model(student, sm_dir, BLACK_LEVEL, WHITE_LEVEL)
    representative, _ = serving.pipeline_mosaics(student, source, source.train_split, calibration_samples,
                                                 training=True)
    tflite = {}
    for kind in ("float32", "dynamic", "int8"):
        logging.info("converting %s to TFLite (%s)", student.model.name, kind)
        tflite[kind] = (serving.int8_tflite(student, representative)[0] if kind == "int8"
                        else serving.to_tflite(sm_dir, kind))
        fig[f"{kind}_bytes"] = len(tflite[kind])
    fig["keras_bytes"] = keras_path.stat().st_size
    raw_path_model = serving.to_tflite(sm_dir, "float32", signature=serving.UINT16_SIGNATURE)
    serving.write_archive(teacher, {serving.SIGNATURE: (
        teacher_fn(teacher, student.norm), tf.TensorSpec([None, size, size, 3], tf.uint8, name="image"))},
        teacher_dir)
    isp_path_model = serving.to_tflite(teacher_dir, "float32")
    fig["raw_path_model_bytes"], fig["isp_path_model_bytes"] = len(raw_path_model), len(isp_path_model)

    take = (opts.agreement_take or None) if agreement else opts.e2e_images
    test, labels = serving.pipeline_mosaics(student, source, source.test_split, take)
    runners = {kind: serving.TFLiteRunner(b, opts.threads) for kind, b in tflite.items()}
    if agreement:
        reference = serving.keras_probabilities(student, test)
        fig["agreement_examples"] = int(len(test))
        fig["keras_top1"] = float(100.0 * np.mean(np.argmax(reference, -1) == labels))
        for kind in ("float32", "dynamic", "int8"):
            probs = runners[kind].predict(test)
            fig[f"{kind}_top1_agreement"] = serving.top1_agreement(probs, reference)
            fig[f"{kind}_max_abs_prob_diff"] = float(np.max(np.abs(probs - reference)))
            fig[f"{kind}_top1"] = float(100.0 * np.mean(np.argmax(probs, -1) == labels))

    singles = [test[i:i + 1] for i in range(min(len(test), opts.e2e_images))]
    serve = tf.function(serving.probabilities_fn(student))
    singles_tf = [tf.constant(x) for x in singles]
    fig["keras_latency_ms"] = median_ms(lambda i: serve(singles_tf[i % len(singles)])[serving.OUTPUT_NAME].numpy(),
                                        opts.runs, opts.warmup)
    for kind, runner in runners.items():
        fig[f"{kind}_latency_ms"] = median_ms(lambda i: runner.invoke(singles[i % len(singles)]),
                                              opts.runs, opts.warmup)
    fig["int8_over_float32_latency"] = fig["int8_latency_ms"] / fig["float32_latency_ms"]
    fig["dynamic_over_float32_latency"] = fig["dynamic_latency_ms"] / fig["float32_latency_ms"]

    dngs = write_dngs(np.concatenate(singles), student.cfa, work)
    raw_runner = serving.TFLiteRunner(raw_path_model, opts.threads)
    isp_runner = serving.TFLiteRunner(isp_path_model, opts.threads)

    def raw_path(i):
        with rawpy.imread(io.BytesIO(dngs[i % len(dngs)])) as raw:
            counts = raw.raw_image_visible.copy()
        return raw_runner.invoke(counts[np.newaxis, ..., np.newaxis])

    def isp(i):
        with rawpy.imread(io.BytesIO(dngs[i % len(dngs)])) as raw:
            return raw.postprocess(**ISP_PARAMS)

    def isp_path(i):
        return isp_runner.invoke(isp(i)[np.newaxis])

    if isp(0).shape != (size, size, 3):
        raise UserError(f"LibRaw returned a {isp(0).shape} image for a {size}x{size} DNG; cannot compare paths")
    fig["e2e_images"] = len(dngs)
    fig["raw_path_latency_ms"] = median_ms(raw_path, opts.runs, opts.warmup)
    fig["isp_path_latency_ms"] = median_ms(isp_path, opts.runs, opts.warmup)
    fig["isp_only_latency_ms"] = median_ms(isp, opts.runs, opts.warmup)
    fig["raw_path_speedup_over_isp_path"] = fig["isp_path_latency_ms"] / fig["raw_path_latency_ms"]
    if agreement:
        e2e_labels = labels[:len(dngs)]
        fig["raw_path_top1"] = float(100.0 * np.mean([np.argmax(raw_path(i)) == e2e_labels[i]
                                                      for i in range(len(dngs))]))
        fig["isp_path_top1"] = float(100.0 * np.mean([np.argmax(isp_path(i)) == e2e_labels[i]
                                                      for i in range(len(dngs))]))
    return fig


def mobilenet_pair(work: Path) -> tuple[serving.Student, object, Path]:
    """MobileNetV2 (1000 classes, random weights) as both student and teacher, with stand-in statistics."""
    model = models.build("mobilenetv2", 1000)
    norm = datasets.Normalisation([0.45] * 3, [0.25] * 3, [0.5] * 3, [0.25] * 3)
    keras_path = work / "mobilenetv2_224.keras"
    model.save(keras_path)
    student = serving.Student(model, "RGGB", 224, [f"class_{i}" for i in range(1000)], norm, noise_std=0.1,
                              path="models.build('mobilenetv2', 1000)")
    return student, model, keras_path


def run(FLAGS) -> dict:
    for name in ("runs", "threads", "calibration_samples", "e2e_images"):
        if FLAGS[name].value < 1:
            raise UserError(f"--{name}={FLAGS[name].value}: must be >= 1")
    try:
        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
        tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)
    except RuntimeError:
        logging.warning("TensorFlow was already initialised; its thread counts are left as they are")
    student = serving.load_student(FLAGS.student)
    if not student.teacher:
        raise UserError(f"--student={FLAGS.student}: student.json names no teacher; the ISP path needs it")
    teacher, _ = models.load_teacher(student.teacher)
    source = datasets.get_source(student.dataset)
    figures = {"student": student.path, "teacher": student.teacher, "threads": FLAGS.threads, "runs": FLAGS.runs,
               "isp": "rawpy.postprocess " + ", ".join(f"{k}={v}" for k, v in ISP_PARAMS.items())}
    with tempfile.TemporaryDirectory(prefix="bench_deploy_") as tmp:
        work = Path(tmp)
        (work / "student").mkdir()
        figures.update(measure(student, teacher, source, work / "student", FLAGS, Path(student.path), True,
                               FLAGS.calibration_samples))
        if FLAGS.mobilenet:
            (work / "mobilenetv2").mkdir()
            mb_student, mb_teacher, keras_path = mobilenet_pair(work / "mobilenetv2")
            figures["mobilenetv2_224_weights"] = "random (latency and size only)"
            mb = measure(mb_student, mb_teacher, source, work / "mobilenetv2", FLAGS, keras_path, False,
                         min(FLAGS.calibration_samples, 100))
            figures.update({f"mobilenetv2_224_{k}": v for k, v in mb.items()})
    return {k: float(f"{v:.5g}") if isinstance(v, float) else v for k, v in figures.items()}
