"""LiteRT runtime: a TFLite interpreter over mosaic -> probabilities models, and batching with progress."""

from __future__ import annotations

import numpy as np

from isp_keras import console
from isp_keras.errors import UserError


class TFLiteRunner:
    """A LiteRT interpreter over a mosaic -> probabilities model; quantises int8 input/output transparently."""

    def __init__(self, model, num_threads: int = 2):
        from ai_edge_litert.interpreter import Interpreter

        kwargs = {"model_content": model} if isinstance(model, bytes) else {"model_path": str(model)}
        try:
            with console.native_stderr_filtered():  # LiteRT's "Created ... XNNPACK delegate" INFO line
                self.interpreter = Interpreter(num_threads=num_threads, **kwargs)
        except (ValueError, RuntimeError) as exc:
            name = kwargs.get("model_path", "model")
            raise UserError(f"{name}: not a TFLite model LiteRT can load ({exc})") from None
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.input_shape = tuple(int(s) for s in self.input["shape"][1:])
        self.batch = int(self.input["shape"][0])
        with console.native_stderr_filtered():
            self.interpreter.allocate_tensors()

    @property
    def input_dtype(self):
        return self.input["dtype"]

    def _resize(self, batch: int) -> None:
        if batch != self.batch:
            self.interpreter.resize_tensor_input(self.input["index"], [batch, *self.input_shape])
            self.interpreter.allocate_tensors()
            self.batch = batch

    def _quantise(self, x: np.ndarray) -> np.ndarray:
        scale, zero = self.input["quantization"]
        if scale == 0:  # not a quantised input (float32 mosaic, uint16 counts, uint8 RGB): feed as is
            return x.astype(self.input["dtype"])
        info = np.iinfo(self.input["dtype"])
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(self.input["dtype"])

    def _dequantise(self, y: np.ndarray) -> np.ndarray:
        scale, zero = self.output["quantization"]
        if scale == 0:
            return y
        return ((y.astype(np.float32) - zero) * scale).astype(np.float32)

    def invoke(self, mosaics: np.ndarray) -> np.ndarray:
        """One interpreter call on the whole batch: float32 [N, H, W, 1] -> probabilities [N, classes]."""
        self._resize(len(mosaics))
        self.interpreter.set_tensor(self.input["index"], self._quantise(mosaics))
        self.interpreter.invoke()
        return self._dequantise(self.interpreter.get_tensor(self.output["index"]))

    def predict(self, mosaics: np.ndarray, batch_size: int = 256) -> np.ndarray:
        return np.concatenate(
            [self.invoke(mosaics[i : i + batch_size]) for i in batches(len(mosaics), batch_size, "LiteRT")]
        )


def batches(count: int, batch_size: int, desc: str):
    """Batch start indices, with a progress bar when there is more than one batch."""
    from tqdm.auto import tqdm

    return tqdm(range(0, count, batch_size), desc=desc, leave=False, disable=count <= batch_size)
