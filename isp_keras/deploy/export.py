"""Export a trained student for deployment (the library behind `python -m isp_keras.export`).

Writes, atomically (a temporary directory renamed into place): a SavedModel taking the Bayer mosaic
(`serving_default`: float32 [batch, H, W, 1] in [0, 1]; `serving_uint16`: sensor counts with the black/white
levels given here), model_float32.tflite, model_int8.tflite (full integer, calibrated on mosaics of the training
pipeline), model_dynamic.tflite, labels.txt and manifest.json (classes, input, CFA, normalisation, parity, sha256).
Then checks parity on real test mosaics and publishes nothing if a gate fails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from absl import logging

from isp_keras import console, fsutil
from isp_keras.data import records
from isp_keras.deploy import parity, runtime, serving, tflite
from isp_keras.deploy.config import ExportConfig
from isp_keras.errors import UserError


def representative_set(cfg: ExportConfig, student: serving.Student, source) -> np.ndarray:
    if cfg.representative:
        try:
            samples = np.load(cfg.representative, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UserError(f"--representative={cfg.representative}: not a readable .npy array ({exc})") from None
    else:
        samples, _ = serving.pipeline_mosaics(
            student, source, source.train_split, cfg.calibration_samples, cfg.seed, training=True
        )
    return serving.check_representative(samples, student.image_size)


def write_export(cfg: ExportConfig, student: serving.Student, source, representative: np.ndarray, tmp: Path) -> dict:
    """Every file of the export into `tmp`, then the parity check; UserError (nothing published) if a gate fails."""
    console.progress("export: SavedModel (mosaic in)")
    serving.export_saved_model(student, tmp, cfg.black_level, cfg.white_level)
    int8_kinds = ["int8"] + (["int8_float_head"] if cfg.float_head else []) + (["int16x8"] if cfg.int16x8 else [])
    kinds = ["float32", *int8_kinds] + (["dynamic"] if cfg.dynamic else [])
    files = {}
    for kind in kinds:
        if kind not in int8_kinds:
            console.progress(f"export: converting to TFLite ({kind})")
            files[kind] = tflite.to_tflite(tmp, kind)
    console.progress(
        f"export: converting to TFLite ({', '.join(int8_kinds)}; {len(representative)} calibration mosaics)"
    )
    integer, ranges = tflite.int8_tflite(student, representative, cfg.range_batch, int8_kinds)
    files.update(integer)
    for kind in kinds:
        (tmp / tflite.TFLITE_FILES[kind]).write_bytes(files[kind])
    (tmp / serving.LABELS).write_text("".join(f"{c}\n" for c in student.classes))
    mosaics, _ = serving.pipeline_mosaics(student, source, source.test_split, cfg.parity_take or None, cfg.seed)
    console.progress(f"export: parity on {len(mosaics)} test mosaics (Keras, SavedModel, {', '.join(kinds)})")
    reference = parity.keras_probabilities(student, mosaics)
    candidates = {"saved_model": parity.saved_model_probabilities(tmp, mosaics)}
    for kind in kinds:
        candidates[kind] = runtime.TFLiteRunner(files[kind]).predict(mosaics)
    figures = parity.parity_figures(reference, candidates)
    described = manifest(
        student,
        tmp,
        kinds,
        figures={**figures, "dataset": f"{source.name}:{source.test_split}"},
        levels=(cfg.black_level, cfg.white_level),
        int8_model=files["int8"],
        calibration={
            "samples": int(len(representative)),
            "source": cfg.representative or f"{source.name}:{source.train_split}",
            "activation_ranges": {
                "method": "mean over batches of per-batch min/max (quantise.py)",
                "batch": cfg.range_batch,
                "ranges": ranges,
            },
        },
    )
    fsutil.write_json_atomic(tmp / serving.MANIFEST, described)
    failures = parity.parity_failures(figures)
    if failures and cfg.parity_gate:
        raise UserError(
            f"--out={cfg.out}: parity failed on {figures['parity_examples']} test mosaics: "
            f"{'; '.join(failures)}; nothing written (--noparity_gate writes anyway)"
        )
    for failure in failures:
        logging.warning("parity failed (written anyway, --noparity_gate): %s", failure)
    return described


def run(cfg: ExportConfig) -> dict:
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise UserError(f"--out={out}: already exists; pass --overwrite or choose another directory")
    student = serving.load_student(cfg.student)
    source = serving.labelled_source(student, f"--student={cfg.student}", cfg.dataset, cfg.seed)
    representative = representative_set(cfg, student, source)
    with fsutil.atomic_dir(out) as tmp:
        return write_export(cfg, student, source, representative, tmp)


def file_hashes(directory) -> dict:
    """sha256 of every file under `directory` but the manifest, by relative path."""
    directory = Path(directory)
    return {
        str(p.relative_to(directory)): records.sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != serving.MANIFEST
    }


def manifest(
    student: serving.Student, directory, kinds: list, figures: dict, levels: tuple, int8_model: bytes, calibration: dict
) -> dict:
    """What a device needs besides the files (classes, input, CFA, statistics) plus parity and every file's sha256."""
    size = student.image_size
    return {
        "classes": list(student.classes),
        "input": {"shape": [None, size, size, 1], "dtype": "float32", "range": [0.0, 1.0]},
        "cfa": student.cfa,
        "normalisation": student.norm.to_json(),
        "noise_std": student.noise_std,
        "sensor": student.sensor,
        "uint16_input": {"signature": serving.UINT16_SIGNATURE, "black_level": levels[0], "white_level": levels[1]},
        "signatures": [serving.SIGNATURE, serving.UINT16_SIGNATURE],
        "output": serving.OUTPUT_NAME,
        "tflite": {kind: tflite.TFLITE_FILES[kind] for kind in kinds},
        "int8_input_quantisation": tflite.tflite_input_quantisation(int8_model),
        "calibration": calibration,
        "parity": figures,
        "student": student.path,
        "teacher": student.teacher,
        "files": file_hashes(directory),
    }
