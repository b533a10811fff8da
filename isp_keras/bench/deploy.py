"""Deployment benchmark (`python -m isp_keras.benchmark --suite=deploy --student=RUN_DIR --json=PATH`).

Latency (--runs single-image calls per figure after --warmup, --threads threads) and size of the Keras student
(the serving graph as a tf.function), float32 / dynamic-range / full-int8 TFLite on LiteRT; int8 top-1 agreement
with Keras on the test split; and end to end on the same DNG bytes:
  RAW path: LibRaw decode -> uint16 counts -> float32 TFLite (levels + bayer infill + norm + student, one graph)
  ISP path: LibRaw decode + LibRaw ISP (rawpy.postprocess: AHD demosaic, colour matrix, 8-bit) -> float32 TFLite
            (teacher normalisation + teacher, one graph) - the same architecture, so the same model size.
  TF ISP path: LibRaw decode -> uint16 counts -> float32 TFLite (levels + bilinear demosaic + clip + teacher
            normalisation + teacher, one graph): the cheapest ISP the teacher can be served with (tf_isp_fn).
A student of another input size than its teacher (a smaller network, `--student_init`) reads DNGs of its own size
on the RAW path; both ISP paths read DNGs of the teacher's size of the same test scenes, as the teacher needs.
Then the same for MobileNetV2 at 224 px with random weights (latency and size only; accuracy is meaningless).

Full-size file (--full_size_mp, default 12 megapixels; a DNG written from the test mosaics, as no real file here is
that large), each path over all the model-size tiles that fit (deploy.tiles):
  RAW path: predict's own path: rawio.read_raw (LibRaw decode, levels, CFA phase) -> tiles -> int8 student, batched
  ISP path: LibRaw decode + rawpy.postprocess of the whole frame -> tiles of RGB of the teacher's size -> float32
            teacher, batched
Latency: --full_size_runs interleaved passes per path. Peak memory: each path once in a fresh Python process, its
peak resident set (ru_maxrss) after the work and before it (imports and models loaded): `full_*_peak_rss_mb` and
`full_*_work_rss_mb` (their difference, what the file itself cost).

The compared runtimes are timed interleaved (bench/timing.py): rounds of --latency_block calls of each, the order
rotating per round. `*_latency_ms` is the median over rounds of a runtime's per-call time; each latency ratio is the
median of the per-round ratios, with their spread as `<ratio>_min/_q1/_q3/_max`.

Importing this module loads no TensorFlow (the benchmark command builds its flags from DeployBenchConfig first).
"""

from __future__ import annotations

import dataclasses
import io
import tempfile
from pathlib import Path

import numpy as np
from absl import logging

from isp_keras import console
from isp_keras.bench import timing
from isp_keras.config import option
from isp_keras.errors import UserError

# The simulated sensor records sRGB-encoded values (pipeline.simulate_raw mosaics the RGB image directly), so the
# matching ISP is demosaic + identity colour + gamma 1 + no auto-brightening; the DNGs carry sRGB primaries.
ISP_PARAMS = dict(gamma=(1, 1), no_auto_bright=True, use_camera_wb=False, user_wb=[1.0, 1.0, 1.0, 1.0], output_bps=8)
BLACK_LEVEL, WHITE_LEVEL = 256, 4095  # a 12-bit sensor


@dataclasses.dataclass
class DeployBenchConfig:
    """Settings of the deployment benchmark; every field is also a flag of the same name (isp_keras.config)."""

    student: str = option("runs/train", "Run directory of the student to benchmark (deploy suite).")
    runs: int = option(300, "Timed single-image calls per latency figure (deploy suite).")
    warmup: int = option(30, "Untimed calls before timing (deploy suite).")
    latency_block: int = option(
        10,
        "Calls of each runtime timed back to back in one interleaved round (deploy "
        "suite); --runs / --latency_block rounds.",
    )
    threads: int = option(2, "Threads for LiteRT and TensorFlow (deploy suite).")
    agreement_take: int = option(0, "Test mosaics for the int8 agreement (0: the whole test split).")
    calibration_samples: int = option(300, "Training-pipeline mosaics calibrating the int8 model.")
    e2e_images: int = option(50, "Distinct DNGs cycled through in the end-to-end timings.")
    mobilenet: bool = option(True, "Also benchmark MobileNetV2 at 224 px (random weights).")
    full_size_mp: float = option(12.0, "Megapixels of the full-size DNG timed end to end, tiles (0: skip).")
    full_size_runs: int = option(3, "Interleaved end-to-end passes per path over the full-size DNG.")

    def validate(self) -> DeployBenchConfig:
        """Check every field (one-line UserError naming the flag); cooperative, so a config composed of several
        suites' configs checks them all. Returns self."""
        for name, low in (
            ("runs", 1),
            ("threads", 1),
            ("calibration_samples", 1),
            ("e2e_images", 1),
            ("latency_block", 1),
            ("warmup", 0),
            ("agreement_take", 0),
            ("full_size_runs", 1),
            ("full_size_mp", 0),
        ):
            if getattr(self, name) < low:
                raise UserError(f"--{name}={getattr(self, name)}: must be >= {low}")
        if not self.student:
            raise UserError("--student: empty; pass a run directory")
        nxt = getattr(super(), "validate", None)
        if nxt is not None:
            nxt()
        return self


def latencies(fns: dict, cfg: DeployBenchConfig, ratios: dict) -> dict:
    """{<name>_latency_ms} of the runtimes `fns` ({name: call(i)}), timed interleaved, and the ratio figures
    `ratios` ({figure: (numerator, denominator)}: median of per-round ratios, plus spread)."""
    rounds, block = timing.split_rounds(cfg.runs, cfg.latency_block)
    t = timing.interleaved_ratios(fns, rounds, block=block, warmup=cfg.warmup)
    out = {f"{name}_latency_ms": t.ms(name) for name in fns}
    for figure, (num, den) in ratios.items():
        out.update(t.ratio_figures(figure, num, den))
    return out


def teacher_fn(teacher, norm):
    """uint8 RGB [batch, H, W, 3] (an ISP's output) -> probabilities, with the teacher's input normalisation."""
    import tensorflow as tf

    from isp_keras.data import pipeline
    from isp_keras.deploy import serving

    def serve(rgb):
        x = pipeline.teacher_input(tf.image.convert_image_dtype(rgb, tf.float32), norm=norm)
        return {serving.OUTPUT_NAME: tf.nn.softmax(teacher(x, training=False), axis=-1)}

    return serve


def tf_isp_fn(teacher, norm, cfa: str):
    """uint16 sensor counts [batch, H, W, 1] -> probabilities through a minimal ISP in TensorFlow: levels, bilinear
    demosaic (the same infill the RAW path's student sees), clipping to the displayable range, then the teacher. The
    simulated sensor records sRGB values, so no white balance, colour matrix or gamma is needed here: this is the
    cheapest ISP the teacher can be served with, and the RAW path's fairest competitor."""
    import tensorflow as tf

    from isp_keras.data import pipeline
    from isp_keras.deploy import serving
    from isp_keras.raw import bayer

    def serve(counts):
        rgb = tf.clip_by_value(bayer.infill(bayer.scale_levels(counts, BLACK_LEVEL, WHITE_LEVEL), cfa), 0.0, 1.0)
        x = pipeline.teacher_input(rgb, norm=norm)
        return {serving.OUTPUT_NAME: tf.nn.softmax(teacher(x, training=False), axis=-1)}

    return serve


def write_dngs(mosaics: np.ndarray, cfa: str, folder: Path) -> list[bytes]:
    """The test mosaics as 12-bit DNGs (clipped to the sensor range, as a real sensor would); their bytes."""
    from isp_keras.raw import rawio

    out = []
    for i, mosaic in enumerate(mosaics[..., 0]):
        counts = np.round(BLACK_LEVEL + np.clip(mosaic, 0.0, 1.0) * (WHITE_LEVEL - BLACK_LEVEL)).astype(np.uint16)
        path = folder / f"e2e_{i:04d}.dng"
        rawio.write_dng(path, counts, cfa, BLACK_LEVEL, WHITE_LEVEL)
        out.append(path.read_bytes())
    return out


def measure(
    student,
    teacher,
    source,
    work: Path,
    cfg: DeployBenchConfig,
    keras_path: Path,
    agreement: bool,
    calibration_samples: int,
) -> dict:
    """All figures of one student (serving.Student) / teacher pair; files go to `work`. `agreement`: also int8/float
    vs Keras on the test split (--agreement_take) and the top-1 of both end-to-end paths."""
    import rawpy
    import tensorflow as tf

    from isp_keras.deploy import parity, runtime, serving, tflite
    from isp_keras.models import architectures, teachers

    fig = {"image_size": student.image_size, "params": architectures.param_count(student.model)}
    size = student.image_size
    # A student of another size than its teacher (a smaller network): the ISP path reads a frame of the teacher's
    # size, the RAW path one of the student's, of the same scenes.
    teacher_size = teachers.input_size(teacher)[0] or size
    fig["teacher_image_size"] = teacher_size
    sm_dir, teacher_dir = work / "student_savedmodel", work / "teacher_savedmodel"
    serving.export_saved_model(student, sm_dir, BLACK_LEVEL, WHITE_LEVEL)
    representative, _ = serving.pipeline_mosaics(
        student, source, source.train_split, calibration_samples, training=True
    )
    models = {}
    for kind in ("float32", "dynamic", "int8"):
        console.progress(f"benchmark: converting {student.model.name} to TFLite ({kind})")
        models[kind] = (
            tflite.int8_tflite(student, representative)[0]["int8"] if kind == "int8" else tflite.to_tflite(sm_dir, kind)
        )
        fig[f"{kind}_bytes"] = len(models[kind])
    fig["keras_bytes"] = keras_path.stat().st_size
    raw_path_model = tflite.to_tflite(sm_dir, "float32", signature=serving.UINT16_SIGNATURE)
    serving.write_archive(
        teacher,
        {
            serving.SIGNATURE: (
                teacher_fn(teacher, student.norm),
                tf.TensorSpec([None, teacher_size, teacher_size, 3], tf.uint8, name="image"),
            )
        },
        teacher_dir,
    )
    isp_path_model = tflite.to_tflite(teacher_dir, "float32")
    tf_isp_dir = work / "tf_isp_savedmodel"
    serving.write_archive(
        teacher,
        {
            serving.SIGNATURE: (
                tf_isp_fn(teacher, student.norm, student.cfa),
                serving.mosaic_spec(teacher_size, tf.uint16),
            )
        },
        tf_isp_dir,
    )
    tf_isp_model = tflite.to_tflite(tf_isp_dir, "float32")
    fig["raw_path_model_bytes"], fig["isp_path_model_bytes"] = len(raw_path_model), len(isp_path_model)
    fig["tf_isp_path_model_bytes"] = len(tf_isp_model)

    take = (cfg.agreement_take or None) if agreement else cfg.e2e_images
    test, labels = serving.pipeline_mosaics(student, source, source.test_split, take)
    runners = {kind: runtime.TFLiteRunner(b, cfg.threads) for kind, b in models.items()}
    if agreement:
        console.progress(f"benchmark: int8/float32 agreement with Keras on {len(test)} test mosaics")
        reference = parity.keras_probabilities(student, test)
        fig["agreement_examples"] = int(len(test))
        fig["keras_top1"] = float(100.0 * np.mean(np.argmax(reference, -1) == labels))
        for kind in ("float32", "dynamic", "int8"):
            probs = runners[kind].predict(test)
            fig[f"{kind}_top1_agreement"] = parity.top1_agreement(probs, reference)
            fig[f"{kind}_max_abs_prob_diff"] = float(np.max(np.abs(probs - reference)))
            fig[f"{kind}_top1"] = float(100.0 * np.mean(np.argmax(probs, -1) == labels))

    singles = [test[i : i + 1] for i in range(min(len(test), cfg.e2e_images))]
    serve = tf.function(serving.probabilities_fn(student))
    singles_tf = [tf.constant(x) for x in singles]
    fns = {"keras": lambda i: serve(singles_tf[i % len(singles)])[serving.OUTPUT_NAME].numpy()}
    for kind, runner in runners.items():
        fns[kind] = lambda i, runner=runner: runner.invoke(singles[i % len(singles)])
    console.progress(f"benchmark: single-image latency of Keras and the TFLite files ({cfg.runs} calls each)")
    fig.update(
        latencies(
            fns,
            cfg,
            {"int8_over_float32_latency": ("int8", "float32"), "dynamic_over_float32_latency": ("dynamic", "float32")},
        )
    )

    dngs = write_dngs(np.concatenate(singles), student.cfa, work)
    isp_dngs = dngs
    if teacher_size != size:
        scenes, _ = serving.pipeline_mosaics(
            dataclasses.replace(student, image_size=teacher_size), source, source.test_split, len(singles)
        )
        (work / "teacher_size").mkdir(exist_ok=True)
        isp_dngs = write_dngs(scenes, student.cfa, work / "teacher_size")
    raw_runner = runtime.TFLiteRunner(raw_path_model, cfg.threads)
    isp_runner = runtime.TFLiteRunner(isp_path_model, cfg.threads)
    tf_isp_runner = runtime.TFLiteRunner(tf_isp_model, cfg.threads)

    def decode(files, i):
        with rawpy.imread(io.BytesIO(files[i % len(files)])) as raw:
            return raw.raw_image_visible.copy()[np.newaxis, ..., np.newaxis]

    def raw_path(i):
        return raw_runner.invoke(decode(dngs, i))

    def tf_isp_path(i):
        return tf_isp_runner.invoke(decode(isp_dngs, i))

    def isp(i):
        with rawpy.imread(io.BytesIO(isp_dngs[i % len(isp_dngs)])) as raw:
            return raw.postprocess(**ISP_PARAMS)

    def isp_path(i):
        return isp_runner.invoke(isp(i)[np.newaxis])

    if isp(0).shape != (teacher_size, teacher_size, 3):
        raise UserError(
            f"LibRaw returned a {isp(0).shape} image for a {teacher_size}x{teacher_size} DNG; cannot compare paths"
        )
    fig["e2e_images"] = len(dngs)
    console.progress(f"benchmark: RAW path against the ISP paths, end to end from {len(dngs)} DNGs")
    fig.update(
        latencies(
            {"raw_path": raw_path, "isp_path": isp_path, "tf_isp_path": tf_isp_path, "isp_only": isp},
            cfg,
            {
                "raw_path_speedup_over_isp_path": ("isp_path", "raw_path"),
                "raw_path_speedup_over_tf_isp_path": ("tf_isp_path", "raw_path"),
            },
        )
    )
    if cfg.full_size_mp > 0:
        console.progress(f"benchmark: a {cfg.full_size_mp:g}-megapixel DNG end to end, both paths")
        fig.update(full_size(student, models["int8"], isp_path_model, teacher_size, np.concatenate(singles), work, cfg))
    if agreement:
        e2e_labels = labels[: len(dngs)]
        fig["raw_path_top1"] = float(
            100.0 * np.mean([np.argmax(raw_path(i)) == e2e_labels[i] for i in range(len(dngs))])
        )
        fig["isp_path_top1"] = float(
            100.0 * np.mean([np.argmax(isp_path(i)) == e2e_labels[i] for i in range(len(dngs))])
        )
        fig["tf_isp_path_top1"] = float(
            100.0 * np.mean([np.argmax(tf_isp_path(i)) == e2e_labels[i] for i in range(len(dngs))])
        )
    return fig


def full_size_shape(megapixels: float, tile: int) -> tuple[int, int]:
    """(H, W), 3:4, even, at least one tile each way."""
    h = max(tile, int(round((megapixels * 1e6 * 3 / 4) ** 0.5 / 2)) * 2)
    return h, max(tile, int(round(h * 4 / 3 / 2)) * 2)


def write_full_size_dng(mosaics: np.ndarray, cfa: str, megapixels: float, path: Path) -> tuple[int, int]:
    """A DNG of `megapixels` tiled from the (even-sized) test mosaics, so the CFA phase runs through it."""
    from isp_keras.raw import rawio

    size = mosaics.shape[1]
    h, w = full_size_shape(megapixels, size)
    reps = (-(-h // size), -(-w // size))
    grid = np.concatenate([np.concatenate(list(np.resize(mosaics[..., 0], (reps[1], size, size))), axis=1)] * reps[0])
    counts = np.round(BLACK_LEVEL + np.clip(grid[:h, :w], 0, 1) * (WHITE_LEVEL - BLACK_LEVEL)).astype(np.uint16)
    rawio.write_dng(path, counts, cfa, BLACK_LEVEL, WHITE_LEVEL)
    return h, w


def path_fns(student_tflite: bytes, teacher_tflite: bytes, dng: Path, cfa: str, threads: int, batch: int = 32):
    """The two full-size paths as calls returning the file's mean probabilities."""
    import rawpy

    from isp_keras.deploy import predict, runtime, tiles

    raw_runner = runtime.TFLiteRunner(student_tflite, threads)
    isp_runner = runtime.TFLiteRunner(teacher_tflite, threads)
    size = isp_runner.input_shape[0]  # the teacher's tiles; the RAW path takes the student's
    labels = [str(i) for i in range(int(raw_runner.output["shape"][-1]))]

    def raw_path(_=0):
        result = predict.classify(raw_runner, labels, {"cfa": cfa}, dng, k=1, fit="tiles", batch_size=batch)
        return result.top[0]

    def isp_path(_=0):
        with rawpy.imread(str(dng)) as raw:
            rgb = raw.postprocess(**ISP_PARAMS)
        windows = tiles.grid(rgb.shape[0], rgb.shape[1], size)
        total = 0.0
        for i in range(0, len(windows), batch):
            crops = np.stack([rgb[w.y : w.y + size, w.x : w.x + size] for w in windows[i : i + batch]])
            total = total + isp_runner.invoke(crops).sum(axis=0, dtype=np.float64)
        return int(np.argmax(total))

    return raw_path, isp_path


def peak_rss_kb() -> int:
    """This process's peak resident memory in KiB: VmHWM where /proc has it, which starts afresh at exec (Linux
    carries ru_maxrss across exec, so a child of a large parent would report the parent's peak)."""
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_rss_child(kind: str, student_tflite: str, teacher_tflite: str, dng: str, cfa: str, threads: int) -> None:
    """Run in a fresh process: one pass of a path; prints {"before_kb", "peak_kb"} (`peak_rss_kb`) as JSON."""
    import json

    raw_path, isp_path = path_fns(
        Path(student_tflite).read_bytes(), Path(teacher_tflite).read_bytes(), Path(dng), cfa, threads
    )
    before = peak_rss_kb()
    (raw_path if kind == "raw" else isp_path)()
    print(json.dumps({"before_kb": before, "peak_kb": peak_rss_kb()}))


def peak_rss(kind: str, files: dict, cfa: str, threads: int) -> dict:
    import json
    import subprocess
    import sys

    code = (
        "from isp_keras.bench.deploy import peak_rss_child; "
        f"peak_rss_child({kind!r}, {str(files['student'])!r}, {str(files['teacher'])!r}, {str(files['dng'])!r}, "
        f"{cfa!r}, {threads})"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
    if run.returncode:
        raise RuntimeError(f"peak-memory run of the {kind} path failed: {run.stderr.strip()[-400:]}")
    out = json.loads(run.stdout.strip().splitlines()[-1])
    return {
        f"full_{kind}_path_peak_rss_mb": out["peak_kb"] / 1024,
        f"full_{kind}_path_work_rss_mb": (out["peak_kb"] - out["before_kb"]) / 1024,
    }


def full_size(
    student, int8_model: bytes, isp_model: bytes, teacher_size: int, mosaics: np.ndarray, work: Path, cfg
) -> dict:
    """Latency and peak memory of the RAW and ISP paths on one full-size DNG (see the module docstring)."""
    from isp_keras.deploy import tiles

    files = {"student": work / "full_int8.tflite", "teacher": work / "full_isp.tflite", "dng": work / "full.dng"}
    files["student"].write_bytes(int8_model)
    files["teacher"].write_bytes(isp_model)
    h, w = write_full_size_dng(mosaics, student.cfa, cfg.full_size_mp, files["dng"])
    raw_path, isp_path = path_fns(int8_model, isp_model, files["dng"], student.cfa, cfg.threads)
    t = timing.interleaved_ratios({"raw": raw_path, "isp": isp_path}, cfg.full_size_runs, block=1, warmup=1)
    fig = {
        "full_size_shape": f"{w}x{h}",
        "full_size_tiles": len(tiles.grid(h, w, student.image_size)),
        "full_size_isp_tiles": len(tiles.grid(h, w, teacher_size)),
        "full_raw_path_latency_ms": t.ms("raw"),
        "full_isp_path_latency_ms": t.ms("isp"),
    }
    fig.update(t.ratio_figures("full_raw_path_speedup_over_isp_path", "isp", "raw"))
    for kind in ("raw", "isp"):
        fig.update(peak_rss(kind, files, student.cfa, cfg.threads))
    fig["full_isp_over_raw_peak_rss"] = fig["full_isp_path_peak_rss_mb"] / fig["full_raw_path_peak_rss_mb"]
    return fig


def mobilenet_pair(work: Path) -> tuple:
    """(serving.Student, teacher, .keras path): MobileNetV2 (1000 classes, random weights) as both student and
    teacher, with stand-in statistics."""
    from isp_keras.data import normalisation
    from isp_keras.deploy import serving
    from isp_keras.models import architectures

    model = architectures.build("mobilenetv2", 1000)
    norm = normalisation.Normalisation([0.45] * 3, [0.25] * 3, [0.5] * 3, [0.25] * 3)
    keras_path = work / "mobilenetv2_224.keras"
    model.save(keras_path)
    student = serving.Student(
        model,
        "RGGB",
        224,
        [f"class_{i}" for i in range(1000)],
        norm,
        noise_std=0.1,
        path="architectures.build('mobilenetv2', 1000)",
    )
    return student, model, keras_path


def run(cfg: DeployBenchConfig) -> dict:
    """All figures of the deployment benchmark: {name: value}; MobileNetV2's carry a `mobilenetv2_224_` prefix."""
    cfg.validate()
    import tensorflow as tf

    from isp_keras.deploy import serving
    from isp_keras.models import teachers

    try:
        tf.config.threading.set_intra_op_parallelism_threads(cfg.threads)
        tf.config.threading.set_inter_op_parallelism_threads(cfg.threads)
    except RuntimeError:
        logging.warning("TensorFlow was already initialised; its thread counts are left as they are")
    student = serving.load_student(cfg.student)
    if not student.teacher:
        raise UserError(f"--student={cfg.student}: student.json names no teacher; the ISP path needs it")
    teacher, _ = teachers.load_teacher(student.teacher)
    source = serving.labelled_source(student, f"--student={cfg.student}")
    figures = {
        "student": student.path,
        "teacher": student.teacher,
        "threads": cfg.threads,
        "runs": cfg.runs,
        "latency_rounds": timing.split_rounds(cfg.runs, cfg.latency_block)[0],
        "isp": "rawpy.postprocess " + ", ".join(f"{k}={v}" for k, v in ISP_PARAMS.items()),
    }
    with tempfile.TemporaryDirectory(prefix="bench_deploy_") as tmp:
        work = Path(tmp)
        (work / "student").mkdir()
        figures.update(
            measure(student, teacher, source, work / "student", cfg, Path(student.path), True, cfg.calibration_samples)
        )
        if cfg.mobilenet:
            (work / "mobilenetv2").mkdir()
            mb_student, mb_teacher, keras_path = mobilenet_pair(work / "mobilenetv2")
            figures["mobilenetv2_224_weights"] = "random (latency and size only)"
            mb = measure(
                mb_student,
                mb_teacher,
                source,
                work / "mobilenetv2",
                cfg,
                keras_path,
                False,
                min(cfg.calibration_samples, 100),
            )
            figures.update({f"mobilenetv2_224_{k}": v for k, v in mb.items()})
    return {k: float(f"{v:.5g}") if isinstance(v, float) else v for k, v in figures.items()}
