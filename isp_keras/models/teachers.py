"""Teachers: keras.applications (ImageNet weights), `.keras` files with a sidecar JSON (their RGB statistics and
classes), SavedModels; checks that a teacher fits the data; freezing."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import keras

from isp_keras import paths
from isp_keras.errors import UserError
from isp_keras.models import packed


@dataclasses.dataclass
class TeacherSpec:
    """What the pipeline must know about a teacher besides its weights."""

    image_size: int
    num_classes: int
    rgb_mean: list
    rgb_std: list
    channel_order: str = "RGB"  # "BGR" for caffe-style keras.applications models
    classes: list | None = None
    arch: str = ""
    source: str = ""
    wnids: list | None = None  # WordNet ids of the outputs where known (ImageNet teachers), to match data by name

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# keras.applications models usable as ImageNet teachers, with their input normalisation expressed on [0,1] RGB.
_TF_MODE = dict(rgb_mean=[0.5] * 3, rgb_std=[0.5] * 3)


_CAFFE_MODE = dict(rgb_mean=[103.939 / 255, 116.779 / 255, 123.68 / 255], rgb_std=[1 / 255] * 3, channel_order="BGR")


_RAW_255 = dict(rgb_mean=[0.0] * 3, rgb_std=[1 / 255] * 3)  # models that rescale inside
_TORCH_MODE = dict(rgb_mean=[0.485, 0.456, 0.406], rgb_std=[0.229, 0.224, 0.225])


KERAS_APPLICATIONS = {
    "MobileNetV2": _TF_MODE,
    "ResNet50": _CAFFE_MODE,
    "ResNet50V2": _TF_MODE,
    "DenseNet121": _TORCH_MODE,
    "EfficientNetB0": _RAW_255,
    "MobileNetV3Small": _RAW_255,
}


def sidecar_path(model_path) -> Path:
    p = Path(model_path)
    return p.with_name(p.name.rstrip("/") + ".json") if p.suffix != ".keras" else p.with_suffix(".json")


def write_spec(model_path, spec: TeacherSpec) -> None:
    from isp_keras import fsutil

    fsutil.write_json_atomic(sidecar_path(model_path), spec.to_json())


def _read_spec(model_path) -> dict | None:
    path = sidecar_path(model_path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable teacher description ({exc})") from None


def _load_keras_applications(name: str) -> keras.Model:
    app = getattr(keras.applications, name)
    try:
        return app(weights="imagenet", classifier_activation=None)
    except Exception as exc:  # keras raises URL/OS errors of several kinds when offline
        raise UserError(
            f"--teacher={name}: could not download the ImageNet weights ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:120]}); give a local .keras file instead"
        ) from None


def load_model_file(path) -> keras.Model:
    """Load a `.keras` file (safe mode: no code from the file runs) or a SavedModel directory."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such model file")
    if path.is_dir():
        if not (path / "saved_model.pb").exists():
            raise UserError(f"{path}: a directory but not a SavedModel (no saved_model.pb)")
        return keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")
    if path.suffix != ".keras":
        raise UserError(f"{path}: expected a .keras file, a .tflite file or a SavedModel directory")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True, custom_objects=packed.CUSTOM_OBJECTS)
    except Exception as exc:
        raise UserError(
            f"{path}: not a loadable Keras model ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160] if str(exc) else ''})"
        ) from None
    if not isinstance(model, keras.Model):
        raise UserError(f"{path}: holds a {type(model).__name__}, not a Keras model")
    return model


def load_teacher(name_or_path: str) -> tuple[keras.Model, TeacherSpec | None]:
    """A teacher by keras.applications name (ImageNet weights, needs internet), `embedded` (the shipped ResNet-20
    CIFAR-10 teacher, found from the installed project whatever the working directory) or by path: a .keras file or
    SavedModel (with an optional sidecar JSON), or a TFLite classifier (models.tflite_import).

    Returns the model and its TeacherSpec from the sidecar JSON (None when there is none: the caller then
    derives normalisation from the data and says so).
    """
    if name_or_path in KERAS_APPLICATIONS:
        model = _load_keras_applications(name_or_path)
        norm = KERAS_APPLICATIONS[name_or_path]
        spec = TeacherSpec(
            image_size=int(model.input_shape[1]),
            num_classes=int(model.output_shape[-1]),
            arch=name_or_path,
            source=f"keras.applications.{name_or_path}(weights='imagenet')",
            **{k: list(v) if isinstance(v, list) else v for k, v in norm.items()},
        )
        return model, spec
    path = Path(paths.teacher_path(name_or_path))
    if not path.exists():
        raise UserError(
            f"--teacher: {name_or_path!r} is neither a file nor a known keras.applications name "
            f"({', '.join(KERAS_APPLICATIONS)})"
        )
    if path.suffix.lower() == ".tflite":  # a (quantised) TFLite classifier, rebuilt as a float Keras model
        from isp_keras.models import tflite_import

        model, spec = tflite_import.import_tflite(path)
        return model, TeacherSpec(**spec)
    model = load_model_file(path)
    if isinstance(model, keras.layers.TFSMLayer):
        model = _saved_model_teacher(path, model)
    raw = _read_spec(path)
    spec = None
    if raw is not None:
        try:
            spec = TeacherSpec(**raw)
        except TypeError as exc:
            raise UserError(f"{sidecar_path(path)}: bad teacher description ({exc})") from None
    return model, spec


def _saved_model_teacher(path: Path, layer: keras.layers.TFSMLayer) -> keras.Model:
    """A SavedModel's `serving_default` (one image input [batch, H, W, 3], one logits output) as a Keras model.

    It can teach (it is only run forward) but not be cloned: the student then needs --student_init."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(path)).signatures["serving_default"]
    inputs = signature.structured_input_signature[1]
    outputs = signature.structured_outputs
    if len(inputs) != 1 or len(outputs) != 1:
        raise UserError(
            f"{path}: serving_default must take one image and return one logits tensor "
            f"(takes {sorted(inputs)}, returns {sorted(outputs)})"
        )
    spec = next(iter(inputs.values()))
    if spec.shape.rank != 4:
        raise UserError(f"{path}: serving_default takes shape {spec.shape}; expected [batch, H, W, 3]")
    x = keras.Input(tuple(spec.shape[1:]), name="image")
    y = layer(x)
    y = next(iter(y.values())) if isinstance(y, dict) else y
    return keras.Model(x, y, name=f"saved_model_{path.name}")


def is_cloneable(model: keras.Model) -> bool:
    return not any(isinstance(layer, keras.layers.TFSMLayer) for layer in model.layers)


def input_size(model: keras.Model) -> tuple[int | None, int | None, int | None]:
    shape = model.input_shape
    if isinstance(shape, list):
        shape = shape[0]
    return tuple(shape[1:4])


def num_outputs(model: keras.Model) -> int:
    return int(model.output_shape[-1])


def check_teacher_matches(model: keras.Model, image_size: int, num_classes: int | None, source: str) -> None:
    """Channels, input size and (unless `num_classes` is None: matched by name elsewhere) the number of outputs."""
    h, w, c = input_size(model)
    if c != 3:
        raise UserError(f"{source}: the teacher takes {c} channels; it must take 3 (RGB)")
    if (h is not None and h != image_size) or (w is not None and w != image_size):
        raise UserError(
            f"{source}: the teacher takes {h}x{w} images but the data is {image_size}x{image_size} "
            f"(set --image_size={h})"
        )
    if num_classes is not None and num_outputs(model) != num_classes:
        raise UserError(f"{source}: the teacher has {num_outputs(model)} classes but the data has {num_classes}")


def freeze(model: keras.Model) -> keras.Model:
    model.trainable = False
    for layer in model.layers:
        layer.trainable = False
    return model


def save_imported(path, out, simulate_rounding: bool = False) -> dict:
    """Import a .tflite file and write it as `out` (.keras) plus the sidecar JSON `teachers.load_teacher` reads."""
    from isp_keras import fsutil
    from isp_keras.models import tflite_import

    out = Path(out)
    if out.suffix != ".keras":
        raise UserError(f"{out}: the imported teacher must be written as a .keras file")
    model, spec = tflite_import.import_tflite(path, simulate_rounding=simulate_rounding)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    fsutil.write_json_atomic(sidecar_path(out), spec)
    return spec
