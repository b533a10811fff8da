"""Configuration of the deployment commands (plain values, no TensorFlow: parsed before TensorFlow loads)."""

from __future__ import annotations

import dataclasses

from isp_keras import paths
from isp_keras.config import option
from isp_keras.errors import UserError
from isp_keras.raw.config import RawFormatOptions

RANGE_BATCH = 100  # calibration mosaics per batch of the activation-range estimate (quantise.activation_ranges)


@dataclasses.dataclass
class ExportConfig:
    student: str = option(
        paths.default_run_dir("train"), "Run directory (student.keras + student.json) or a student .keras file."
    )
    out: str = option("export", "Export directory to create.")
    dataset: str = option("", "Data for calibration and parity (default: the run's dataset).")
    calibration_samples: int = option(300, "Training-pipeline mosaics used to calibrate the int8 model.")
    range_batch: int = option(
        RANGE_BATCH,
        "Calibration mosaics per batch when estimating the int8 activation ranges (mean of per-batch min/max).",
    )
    representative: str = option("", "Optional .npy of calibration mosaics [N, H, W(, 1)] float in [0,1].")
    parity_take: int = option(0, "Test mosaics for the parity check (0: the whole test split).")
    black_level: float = option(0.0, "Sensor black level of the uint16 serving input.")
    white_level: float = option(65535.0, "Sensor white level of the uint16 serving input.")
    dynamic: bool = option(True, "Also write model_dynamic.tflite (dynamic-range: int8 weights).")
    float_head: bool = option(
        False,
        "Also write model_int8_float_head.tflite: int8 but the classifier head (fully connected layers and softmax), "
        "with float32 input and output, so near-tied classes are not rounded onto one int8 step.",
    )
    int16x8: bool = option(
        False,
        "Also write model_int16x8.tflite: int16 activations with int8 weights (LiteRT's 16x8 mode), float32 input and "
        "output, for a student whose int8 activations round too coarsely; XNNPACK does not run it, so it is slower.",
    )
    parity_gate: bool = option(True, "Publish nothing (exit 2) if a parity gate fails.")
    overwrite: bool = option(False, "Replace an existing --out directory.")
    seed: int = option(0, "Seed of the calibration/parity mosaics' noise.")

    def validate(self) -> ExportConfig:
        if self.calibration_samples < 1:
            raise UserError(f"--calibration_samples={self.calibration_samples}: must be >= 1")
        if self.range_batch < 1:
            raise UserError(f"--range_batch={self.range_batch}: must be >= 1")
        if self.parity_take < 0:
            raise UserError(f"--parity_take={self.parity_take}: must be >= 0 (0: the whole test split)")
        return self


@dataclasses.dataclass
class PredictConfig(RawFormatOptions):
    model: str = option(
        "export/model_int8.tflite",
        "An exported .tflite (model_int8.tflite, model_float32.tflite, "
        "...), with labels.txt and manifest.json beside it.",
    )
    top_k: int = option(5, "How many labels to print per file.")
    num_threads: int = option(2, "LiteRT interpreter threads.")
    fit: str = option(
        "tiles",
        "How a photo meets the model's input: tiles (mean of full-resolution tiles, the paper's protocol), "
        "bin (average same-colour sites down to the model's size, then centre crop), center (the middle crop).",
        choices=("tiles", "bin", "center"),
    )
    batch_size: int = option(32, "Tiles per LiteRT call.")
    json: str = option("", "Also write the predictions as JSON to this path.")
    tiles_out: str = option("", "Write every tile's position and top-k to this .json or .csv file.")
    overlay_dir: str = option("", "Write one PNG per file: the photo with each tile's top class and confidence.")
    files: list[str] = option(
        [], "RAW files: DNG (or any LibRaw format), sensor dumps, PNG/TIFF mosaics or .npy mosaics.", positional=True
    )

    def validate(self) -> PredictConfig:
        super().validate()
        if not self.files:
            raise UserError("no RAW files given: python -m isp_keras.predict --model=MODEL.tflite FILE...")
        if self.top_k < 1:
            raise UserError(f"--top_k={self.top_k}: must be >= 1")
        if self.batch_size < 1:
            raise UserError(f"--batch_size={self.batch_size}: must be >= 1")
        if self.tiles_out and not self.tiles_out.endswith((".json", ".csv")):
            raise UserError(f"--tiles_out={self.tiles_out}: give a .json or .csv path")
        return self


@dataclasses.dataclass
class RealRawConfig(RawFormatOptions):
    pairs: str = option("", "csv:FILE, hdrplus:DIR or raw:DIR (every RAW file in DIR, its RGB rendered by LibRaw).")
    students: list[str] = option([], "Trained students to compare: NAME=RUN_DIR (student.keras + student.json).")
    teacher: str = option("", "The RGB teacher (default: the one named in the first student's student.json).")
    mode: str = option("merged", "hdrplus: pairs only: merged (the merged DNG) or short (the reference frame).")
    min_teacher_prob: float = option(0.8, "A tile counts as confident when the teacher's top probability exceeds this.")
    batch_size: int = option(16, "Tiles per forward pass.")
    bin: int = option(1, "Shrink each pair by this factor first (Bayer binning / RGB block mean) so tiles see more.")
    out: str = option(paths.default_run_dir("real_raw"), "Where results.json and results.md go.")

    def validate(self) -> RealRawConfig:
        super().validate()
        if not self.pairs:
            raise UserError("--pairs: required (csv:FILE, hdrplus:DIR or raw:DIR)")
        if not self.students:
            raise UserError("--students: give one or more trained students (NAME=RUN_DIR)")
        if not 0.0 <= self.min_teacher_prob < 1.0:
            raise UserError(f"--min_teacher_prob={self.min_teacher_prob}: must be in [0, 1)")
        if self.batch_size < 1:
            raise UserError(f"--batch_size={self.batch_size}: must be >= 1")
        if self.bin < 1:
            raise UserError(f"--bin={self.bin}: must be >= 1")
        return self
