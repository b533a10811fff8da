"""Reading a TFLite classifier without an interpreter: its flatbuffer (through the `tflite` schema package), its
tensors dequantised to float32, its input normalisation, and the class names and WordNet ids kept beside it. The
Keras model is built from what this reads by models/tflite_import.py."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import tflite
from tflite.utils import BUILTIN_OPCODE2NAME

from isp_keras.errors import UserError

LABELS_FILE = "imagenet_labels.txt"  # class names in output order, read when beside the .tflite file
SYNSETS_FILE = "imagenet_synsets.txt"  # WordNet ids of outputs 1..1000 (0 is background), read when beside it

# TensorType enum values of the TFLite schema -> NumPy dtypes of the raw buffers.
DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16, 9: np.int8}
UINT8 = 3
INT8 = 9


def dequantize(values: np.ndarray, scale, zero_point, axis: int = 0) -> np.ndarray:
    """real = scale * (q - zero_point): one scale and zero point for the tensor, or one per slice along `axis`
    (TFLite's quantized_dimension: per-channel weights)."""
    values = np.asarray(values)
    shape = [-1 if d == axis else 1 for d in range(values.ndim)]

    def along_axis(a):
        a = np.asarray(a, np.float64).reshape(-1)
        return a.reshape(shape) if a.size > 1 else a[0]

    return ((values.astype(np.float64) - along_axis(zero_point)) * along_axis(scale)).astype(np.float32)


def damaged(path: Path, exc: Exception) -> UserError:
    return UserError(f"{path}: a damaged or truncated TFLite flatbuffer ({exc})")


def opcode_name(model, op) -> str:
    """The builtin name of operator `op` of the parsed TFLite `model` ("CONV_2D"; "CUSTOM (name)" for custom ops)."""
    code = model.OperatorCodes(op.OpcodeIndex())
    # Codes above 127 live only in builtin_code; old files set only deprecated_builtin_code.
    builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
    name = BUILTIN_OPCODE2NAME.get(builtin, f"BUILTIN_{builtin}")
    if name == "CUSTOM":
        name = f"CUSTOM ({(code.CustomCode() or b'').decode(errors='replace')})"
    return name


class Graph:
    """The main subgraph of a parsed .tflite file, with typed access to tensors, constants and options."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.buf = path.read_bytes()
        except OSError as exc:
            raise UserError(f"{path}: cannot read ({exc.strerror or exc})") from None
        if len(self.buf) < 8 or not tflite.Model.ModelBufferHasIdentifier(self.buf, 0):
            raise UserError(f"{path}: not a TFLite flatbuffer (no 'TFL3' file identifier)")
        try:
            self.model = tflite.Model.GetRootAs(self.buf, 0)
            self.graph = self.model.Subgraphs(0)
            self.num_ops = self.graph.OperatorsLength()
        except struct.error as exc:  # what the generated readers raise past the end of the file
            raise damaged(path, exc) from None
        if self.graph is None:
            raise UserError(f"{path}: a TFLite file with no subgraph")

    def op(self, i: int):
        return self.graph.Operators(i)

    def op_name(self, op) -> str:
        return opcode_name(self.model, op)

    def tensor(self, i: int):
        return self.graph.Tensors(i)

    def shape(self, i: int) -> tuple[int, ...]:
        return tuple(int(d) for d in self.tensor(i).ShapeAsNumpy()) if self.tensor(i).ShapeLength() else ()

    def quantisation(self, i: int) -> tuple[np.ndarray, np.ndarray, int] | None:
        """(scales, zero points, quantized_dimension) of a quantised tensor, else None."""
        q = self.tensor(i).Quantization()
        if q is None or q.ScaleLength() == 0:
            return None
        zero_point = q.ZeroPointAsNumpy() if q.ZeroPointLength() else np.zeros(1, np.int64)
        return q.ScaleAsNumpy().astype(np.float64), np.asarray(zero_point, np.int64), q.QuantizedDimension()

    def raw(self, i: int) -> np.ndarray | None:
        """The stored contents of a constant tensor (as typed in the file), None for an activation."""
        tensor = self.tensor(i)
        buffer = self.model.Buffers(tensor.Buffer())
        if buffer is None or buffer.DataLength() == 0:
            return None
        dtype = DTYPES.get(tensor.Type())
        if dtype is None:
            raise UserError(
                f"{self.path}: constant {tensor.Name().decode(errors='replace')} has TFLite type "
                f"{tensor.Type()}, which is not supported"
            )
        data = buffer.DataAsNumpy().tobytes()
        if len(data) != np.dtype(dtype).itemsize * int(np.prod(self.shape(i))):
            raise damaged(
                self.path,
                ValueError(
                    f"constant {tensor.Name().decode(errors='replace')} holds "
                    f"{len(data)} bytes for shape {list(self.shape(i))}"
                ),
            )
        return np.frombuffer(data, dtype).reshape(self.shape(i))

    def constant(self, i: int) -> np.ndarray | None:
        """A constant tensor as float32 (dequantised when quantised), None for an activation."""
        raw = self.raw(i)
        if raw is None:
            return None
        quant = self.quantisation(i)
        if quant is None or raw.dtype.kind == "f":
            return raw.astype(np.float32)
        return dequantize(raw, *quant)

    def options(self, op, cls):
        table = op.BuiltinOptions()
        if table is None:
            return None
        opts = cls()
        opts.Init(table.Bytes, table.Pos)
        return opts


def input_statistics(g: Graph) -> tuple[list, list]:
    """rgb_mean, rgb_std on [0, 1] pixels such that (rgb01 - mean) / std is the file's dequantised input.

    A uint8 input holds the pixel (rgb01 * 255), an int8 input the pixel - 128; a float input carries no statement
    of its normalisation, so it is taken as [0, 1] RGB (mean 0, std 1)."""
    t = g.graph.Inputs(0)
    channels = g.shape(t)[-1]
    quant = g.quantisation(t)
    dtype = g.tensor(t).Type()
    if quant is None or dtype not in (UINT8, INT8):
        return [0.0] * channels, [1.0] * channels
    scale, zero_point = float(quant[0][0]), int(quant[1][0])
    offset = 0 if dtype == UINT8 else -128
    # (q - zp) * scale with q = 255 * rgb01 + offset  ==  (rgb01 - (zp - offset) / 255) / (1 / (255 * scale))
    return [(zero_point - offset) / 255] * channels, [1 / (255 * scale)] * channels


def names_beside(path: Path, num_classes: int) -> tuple[list, list | None]:
    """Class names (LABELS_FILE, else "0".."n-1") and WordNet ids (SYNSETS_FILE, with "background" first when the
    model has one output more than the file has ids), from files beside the model."""
    classes: list = [str(k) for k in range(num_classes)]
    wnids = None
    labels_path, synsets_path = path.with_name(LABELS_FILE), path.with_name(SYNSETS_FILE)
    if labels_path.exists():
        classes = [line.strip() for line in labels_path.read_text().splitlines() if line.strip()]
        if len(classes) != num_classes:
            raise UserError(f"{labels_path}: {len(classes)} class names but {path.name} has {num_classes} outputs")
    if synsets_path.exists():
        wnids = [line.strip() for line in synsets_path.read_text().splitlines() if line.strip()]
        if len(wnids) == num_classes - 1:
            wnids = ["background"] + wnids
        if len(wnids) != num_classes:
            raise UserError(f"{synsets_path}: {len(wnids)} WordNet ids but {path.name} has {num_classes} outputs")
    return classes, wnids
