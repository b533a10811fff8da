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
        with console.native_stderr_filtered():  # LiteRT's "Created ... XNNPACK delegate" INFO line
            try:
                self.interpreter = Interpreter(num_threads=num_threads, **kwargs)
            except (ValueError, RuntimeError) as exc:
                name = kwargs.get("model_path", "model")
                raise UserError(f"{name}: not a TFLite model LiteRT can load ({exc})") from None
            self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.input_shape = tuple(int(s) for s in self.input["shape"][1:])
        self.batch = int(self.input["shape"][0])

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


def compare_imported_with_litert(
    path,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    model=None,
    spec: dict | None = None,
    batch_size: int = 50,
) -> dict:
    """Top-1 of LiteRT running the file vs the imported Keras model on uint8 RGB images [N, size, size, 3].

    Both see the same pixels: LiteRT as the file's input type (uint8 as is, int8 as pixel - 128, float as
    pixel / 255), Keras as (pixel / 255 - rgb_mean) / rgb_std. Returns the number of images, the % of images whose
    top-1 classes agree, the % that agree up to ties in the file's output (a quantised softmax often gives two
    classes the same top value; LiteRT's argmax then takes the lower index), and with `labels` (output indices)
    each one's top-1 accuracy in %."""
    from ai_edge_litert.interpreter import Interpreter

    from isp_keras.models import tflite_import

    if model is None or spec is None:
        model, spec = tflite_import.import_tflite(path)
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 [N, H, W, 3], not {images.dtype} {images.shape}")
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    litert = []
    for image in images:  # one at a time: these files have a fixed batch of 1
        if inp["dtype"] == np.uint8:
            x = image
        elif inp["dtype"] == np.int8:
            x = (image.astype(np.int16) - 128).astype(np.int8)
        else:
            x = image.astype(np.float32) / 255
        interpreter.set_tensor(inp["index"], x[np.newaxis])
        interpreter.invoke()
        litert.append(interpreter.get_tensor(out["index"])[0].copy())
    mean, std = np.float32(spec["rgb_mean"]), np.float32(spec["rgb_std"])
    ours = []
    for start in range(0, len(images), batch_size):
        x = (images[start : start + batch_size].astype(np.float32) / 255 - mean) / std
        ours.append(np.argmax(np.asarray(model(x, training=False)), axis=-1))
    outputs, ours = np.stack(litert), np.concatenate(ours)
    litert = np.argmax(outputs, axis=-1)
    tied = outputs[np.arange(len(ours)), ours] == outputs.max(axis=-1)
    result = {
        "images": int(len(images)),
        "agreement": float(100 * np.mean(litert == ours)),
        "agreement_up_to_ties": float(100 * np.mean(tied)),
    }
    if labels is not None:
        labels = np.asarray(labels)
        result["litert_top1"] = float(100 * np.mean(litert == labels))
        result["keras_top1"] = float(100 * np.mean(ours == labels))
    return result
