"""Export a trained student for deployment: `python -m isp_keras.export --student=RUN_DIR --out=DIR`.

Writes, atomically (a temporary directory renamed into place): a SavedModel taking the Bayer mosaic
(`serving_default`: float32 [batch, H, W, 1] in [0, 1]; `serving_uint16`: sensor counts with the black/white
levels given here), model_float32.tflite, model_int8.tflite (full integer, calibrated on mosaics of the training
pipeline), model_dynamic.tflite, labels.txt and manifest.json (classes, input, CFA, normalisation, parity, sha256).
Then checks parity on real test mosaics and publishes nothing if a gate fails.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from absl import app, flags, logging

from isp_keras import datasets, fsutil, serving
from isp_keras.errors import UserError, run_main

FLAGS = flags.FLAGS


@dataclasses.dataclass
class ExportConfig:
    student: str
    out: str
    dataset: str = ""  # default: the run's dataset (config.json), else embedded
    calibration_samples: int = 300
    range_batch: int = serving.RANGE_BATCH  # mosaics per batch of the activation-range estimate
    representative: str = ""  # .npy of mosaics [N, H, W(, 1)] instead of the training pipeline
    parity_take: int | None = None  # None: the whole test split
    black_level: float = 0.0
    white_level: float = 65535.0
    dynamic: bool = True
    parity_gate: bool = True
    overwrite: bool = False
    seed: int = 0


def representative_set(cfg: ExportConfig, student: serving.Student, source) -> np.ndarray:
    if cfg.representative:
        try:
            samples = np.load(cfg.representative, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise UserError(f"--representative={cfg.representative}: not a readable .npy array ({exc})") from None
    else:
        samples, _ = serving.pipeline_mosaics(student, source, source.train_split, cfg.calibration_samples,
                                              cfg.seed, training=True)
    return serving.check_representative(samples, student.image_size)


def write_export(cfg: ExportConfig, student: serving.Student, source, representative: np.ndarray, tmp: Path) -> dict:
    """Every file of the export into `tmp`, then the parity check; UserError (nothing published) if a gate fails."""
    serving.export_saved_model(student, tmp, cfg.black_level, cfg.white_level)
    kinds = ["float32", "int8"] + (["dynamic"] if cfg.dynamic else [])
    tflite = {}
    ranges = {}
    for kind in kinds:
        logging.info("converting to TFLite (%s)", kind)
        if kind == "int8":
            tflite[kind], ranges = serving.int8_tflite(student, representative, cfg.range_batch)
        else:
            tflite[kind] = serving.to_tflite(tmp, kind)
        (tmp / serving.TFLITE_FILES[kind]).write_bytes(tflite[kind])
    (tmp / serving.LABELS).write_text("".join(f"{c}\n" for c in student.classes))
    mosaics, _ = serving.pipeline_mosaics(student, source, source.test_split, cfg.parity_take, cfg.seed)
    reference = serving.keras_probabilities(student, mosaics)
    candidates = {"saved_model": serving.saved_model_probabilities(tmp, mosaics)}
    for kind in kinds:
        candidates[kind] = serving.TFLiteRunner(tflite[kind]).predict(mosaics)
    parity = serving.parity_figures(reference, candidates)
    manifest = serving.manifest(
        student, tmp, kinds, parity={**parity, "dataset": f"{source.name}:{source.test_split}"},
        levels=(cfg.black_level, cfg.white_level), int8_model=tflite["int8"],
        calibration={"samples": int(len(representative)),
                     "source": cfg.representative or f"{source.name}:{source.train_split}",
                     "activation_ranges": {"method": "mean over batches of per-batch min/max (quantise.py)",
                                           "batch": cfg.range_batch, "ranges": ranges}})
    fsutil.write_json_atomic(tmp / serving.MANIFEST, manifest)
    failures = serving.parity_failures(parity)
    if failures and cfg.parity_gate:
        raise UserError(f"--out={cfg.out}: parity failed on {parity['parity_examples']} test mosaics: "
                        f"{'; '.join(failures)}; nothing written (--noparity_gate writes anyway)")
    for failure in failures:
        logging.warning("parity failed (written anyway, --noparity_gate): %s", failure)
    return manifest


def run(cfg: ExportConfig) -> dict:
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        raise UserError(f"--out={out}: already exists; pass --overwrite or choose another directory")
    student = serving.load_student(cfg.student)
    source = datasets.get_source(cfg.dataset or student.dataset, seed=cfg.seed)
    if len(source.classes) != len(student.classes):
        raise UserError(f"--dataset={source.name}: {len(source.classes)} classes but the student has "
                        f"{len(student.classes)}")
    representative = representative_set(cfg, student, source)
    with fsutil.atomic_dir(out) as tmp:
        manifest = write_export(cfg, student, source, representative, tmp)
    return manifest


def main(argv):
    del argv
    cfg = ExportConfig(student=FLAGS.student, out=FLAGS.out, dataset=FLAGS.dataset,
                       calibration_samples=FLAGS.calibration_samples, range_batch=FLAGS.range_batch,
                       representative=FLAGS.representative, parity_take=FLAGS.parity_take or None,
                       black_level=FLAGS.black_level, white_level=FLAGS.white_level, dynamic=FLAGS.dynamic,
                       parity_gate=FLAGS.parity_gate, overwrite=FLAGS.overwrite, seed=FLAGS.seed)
    if cfg.calibration_samples < 1:
        raise UserError(f"--calibration_samples={cfg.calibration_samples}: must be >= 1")
    if cfg.range_batch < 1:
        raise UserError(f"--range_batch={cfg.range_batch}: must be >= 1")
    manifest = run(cfg)
    p = manifest["parity"]
    print(f"wrote {cfg.out}: SavedModel ({', '.join(manifest['signatures'])}), "
          f"{', '.join(manifest['tflite'].values())}, {serving.LABELS}, {serving.MANIFEST}")
    print(f"parity on {p['parity_examples']} test mosaics ({p['dataset']}): SavedModel max |dp| "
          f"{p['saved_model_max_abs_prob_diff']:.2e}, float32 TFLite max |dp| {p['float32_max_abs_prob_diff']:.2e}, "
          f"int8 top-1 agreement {p['int8_top1_agreement']:.2f}%"
          + (f", dynamic top-1 agreement {p['dynamic_top1_agreement']:.2f}%" if "dynamic_top1_agreement" in p else ""))


def define_flags() -> None:
    flags.DEFINE_string("student", None, "Run directory (student.keras + student.json) or a student .keras file.")
    flags.DEFINE_string("out", None, "Export directory to create.")
    flags.DEFINE_string("dataset", "", "Data for calibration and parity (default: the run's dataset).")
    flags.DEFINE_integer("calibration_samples", 300, "Training-pipeline mosaics used to calibrate the int8 model.")
    flags.DEFINE_integer("range_batch", serving.RANGE_BATCH, "Calibration mosaics per batch when estimating the "
                         "int8 activation ranges (mean of per-batch min/max).")
    flags.DEFINE_string("representative", "", "Optional .npy of calibration mosaics [N, H, W(, 1)] float in [0,1].")
    flags.DEFINE_integer("parity_take", 0, "Test mosaics for the parity check (0: the whole test split).")
    flags.DEFINE_float("black_level", 0.0, "Sensor black level of the uint16 serving input.")
    flags.DEFINE_float("white_level", 65535.0, "Sensor white level of the uint16 serving input.")
    flags.DEFINE_boolean("dynamic", True, "Also write model_dynamic.tflite (dynamic-range: int8 weights).")
    flags.DEFINE_boolean("parity_gate", True, "Publish nothing (exit 2) if a parity gate fails.")
    flags.DEFINE_boolean("overwrite", False, "Replace an existing --out directory.")
    flags.DEFINE_integer("seed", 0, "Seed of the calibration/parity mosaics' noise.")
    flags.mark_flags_as_required(["student", "out"])


if __name__ == "__main__":
    define_flags()
    app.run(run_main(main))
