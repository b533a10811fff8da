"""Model builders (ResNet and MobileNetV2 families at 224 and 32 px), teacher loading, student-from-teacher.

Every network here takes a normalised image and returns logits (no softmax). Input normalisation lives in
the data pipeline (teacher: per-channel RGB statistics; student: per-Bayer-site RAW statistics) and, at
export time, inside the serving graph.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import keras
import numpy as np
from keras import layers

from isp_keras.errors import UserError

WEIGHT_DECAY = 5e-4


def _conv(filters, kernel, strides=1, name=None):
    return layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                         kernel_initializer="he_normal", name=name)


def _bn(name=None):
    return layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)


def _basic_block(x, filters, strides, name):
    shortcut = x
    y = _conv(filters, 3, strides, name=f"{name}_conv1")(x)
    y = _bn(f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = _conv(filters, 3, 1, name=f"{name}_conv2")(y)
    y = _bn(f"{name}_bn2")(y)
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _conv(filters, 1, strides, name=f"{name}_proj")(x)
        shortcut = _bn(f"{name}_proj_bn")(shortcut)
    y = layers.Add(name=f"{name}_add")([y, shortcut])
    return layers.ReLU(name=f"{name}_out")(y)


def resnet(input_shape, num_classes, blocks, widths, imagenet_stem, name):
    """ResNet with basic blocks. `imagenet_stem`: 7x7/2 conv + 3x3/2 max-pool; else a 3x3/1 conv (32-px images)."""
    inputs = keras.Input(input_shape, name="image")
    if imagenet_stem:
        x = _conv(widths[0], 7, 2, name="stem_conv")(inputs)
        x = _bn("stem_bn")(x)
        x = layers.ReLU(name="stem_relu")(x)
        x = layers.MaxPooling2D(3, 2, padding="same", name="stem_pool")(x)
    else:
        x = _conv(widths[0], 3, 1, name="stem_conv")(inputs)
        x = _bn("stem_bn")(x)
        x = layers.ReLU(name="stem_relu")(x)
    for stage, (count, filters) in enumerate(zip(blocks, widths)):
        for block in range(count):
            strides = 2 if (stage > 0 and block == 0) else 1
            x = _basic_block(x, filters, strides, name=f"stage{stage + 1}_block{block + 1}")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def _inverted_residual(x, expansion, filters, strides, name):
    in_ch = x.shape[-1]
    y = x
    if expansion != 1:
        y = layers.Conv2D(in_ch * expansion, 1, use_bias=False, name=f"{name}_expand")(y)
        y = _bn(f"{name}_expand_bn")(y)
        y = layers.ReLU(6.0, name=f"{name}_expand_relu")(y)
    y = layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False, name=f"{name}_dw")(y)
    y = _bn(f"{name}_dw_bn")(y)
    y = layers.ReLU(6.0, name=f"{name}_dw_relu")(y)
    y = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_project")(y)
    y = _bn(f"{name}_project_bn")(y)
    if strides == 1 and in_ch == filters:
        y = layers.Add(name=f"{name}_add")([x, y])
    return y


def _make_divisible(v, divisor=8):
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


# (expansion, channels, repeats, stride) of MobileNetV2 (Sandler et al., 2018).
_MBV2_CONFIG = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def mobilenet_v2(input_shape, num_classes, width=1.0, small_input=False, name="mobilenetv2"):
    """MobileNetV2. `small_input` (32 px): stem stride 1 and the second stage at stride 1 (total stride 8)."""
    inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(_make_divisible(32 * width), 3, strides=1 if small_input else 2, padding="same",
                      use_bias=False, name="stem_conv")(inputs)
    x = _bn("stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    block = 0
    for stage, (t, c, n, s) in enumerate(_MBV2_CONFIG):
        if small_input and stage == 1:
            s = 1
        for i in range(n):
            block += 1
            x = _inverted_residual(x, t, _make_divisible(c * width), s if i == 0 else 1, name=f"block{block}")
    x = layers.Conv2D(max(1280, _make_divisible(1280 * width)) if width > 1 else 1280, 1, use_bias=False,
                      name="head_conv")(x)
    x = _bn("head_bn")(x)
    x = layers.ReLU(6.0, name="head_relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


# Architectures this project builds (for training teachers, and for tests). Image size is the native one.
ARCHITECTURES = {
    "resnet18": dict(size=224, build=lambda s, k: resnet(s, k, [2, 2, 2, 2], [64, 128, 256, 512], True, "resnet18")),
    "mobilenetv2": dict(size=224, build=lambda s, k: mobilenet_v2(s, k, name="mobilenetv2")),
    "resnet18_32": dict(size=32, build=lambda s, k: resnet(s, k, [2, 2, 2, 2], [64, 128, 256, 512], False, "resnet18_32")),
    "resnet20": dict(size=32, build=lambda s, k: resnet(s, k, [3, 3, 3], [16, 32, 64], False, "resnet20")),
    "mobilenetv2_32": dict(size=32, build=lambda s, k: mobilenet_v2(s, k, 0.5, True, "mobilenetv2_32")),
    "resnet_tiny": dict(size=32, build=lambda s, k: resnet(s, k, [1, 1], [8, 16], False, "resnet_tiny")),
}


def build(arch: str, num_classes: int, image_size: int | None = None) -> keras.Model:
    if arch not in ARCHITECTURES:
        raise UserError(f"--arch: unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    spec = ARCHITECTURES[arch]
    size = image_size or spec["size"]
    return spec["build"]((size, size, 3), num_classes)


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

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


# keras.applications models usable as ImageNet teachers, with their input normalisation expressed on [0,1] RGB.
_TF_MODE = dict(rgb_mean=[0.5] * 3, rgb_std=[0.5] * 3)
_CAFFE_MODE = dict(rgb_mean=[103.939 / 255, 116.779 / 255, 123.68 / 255], rgb_std=[1 / 255] * 3, channel_order="BGR")
_TORCH_MODE = dict(rgb_mean=[0.485, 0.456, 0.406], rgb_std=[0.229, 0.224, 0.225])
_RAW_255 = dict(rgb_mean=[0.0] * 3, rgb_std=[1 / 255] * 3)  # models that rescale inside
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
        raise UserError(f"--teacher={name}: could not download the ImageNet weights ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:120]}); give a local .keras file instead") from None


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
        raise UserError(f"{path}: expected a .keras file or a SavedModel directory")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:
        raise UserError(f"{path}: not a loadable Keras model ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    if not isinstance(model, keras.Model):
        raise UserError(f"{path}: holds a {type(model).__name__}, not a Keras model")
    return model


def load_teacher(name_or_path: str) -> tuple[keras.Model, TeacherSpec | None]:
    """A teacher by keras.applications name (ImageNet weights, needs internet) or by path.

    Returns the model and its TeacherSpec from the sidecar JSON (None when there is none: the caller then
    derives normalisation from the data and says so).
    """
    if name_or_path in KERAS_APPLICATIONS:
        model = _load_keras_applications(name_or_path)
        norm = KERAS_APPLICATIONS[name_or_path]
        spec = TeacherSpec(image_size=int(model.input_shape[1]), num_classes=int(model.output_shape[-1]),
                           arch=name_or_path, source=f"keras.applications.{name_or_path}(weights='imagenet')",
                           **{k: list(v) if isinstance(v, list) else v for k, v in norm.items()})
        return model, spec
    path = Path(name_or_path)
    if not path.exists():
        raise UserError(f"--teacher: {name_or_path!r} is neither a file nor a known keras.applications name "
                        f"({', '.join(KERAS_APPLICATIONS)})")
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
        raise UserError(f"{path}: serving_default must take one image and return one logits tensor "
                        f"(takes {sorted(inputs)}, returns {sorted(outputs)})")
    spec = next(iter(inputs.values()))
    if spec.shape.rank != 4:
        raise UserError(f"{path}: serving_default takes shape {spec.shape}; expected [batch, H, W, 3]")
    x = keras.Input(tuple(spec.shape[1:]), name="image")
    y = layer(x)
    y = next(iter(y.values())) if isinstance(y, dict) else y
    return keras.Model(x, y, name=f"saved_model_{path.name}")


def load_student_init(path, teacher: keras.Model) -> keras.Model:
    """--student_init: a .keras model of the teacher's input/output shapes whose architecture and weights the
    student starts from (needed when the teacher is a SavedModel, which cannot be cloned)."""
    model = load_model_file(path)
    if isinstance(model, keras.layers.TFSMLayer):
        raise UserError(f"--student_init={path}: must be a .keras file (a SavedModel has no architecture to clone)")
    if model.input_shape[1:] != teacher.input_shape[1:] or model.output_shape[-1] != teacher.output_shape[-1]:
        raise UserError(f"--student_init={path}: takes {model.input_shape[1:]} -> {model.output_shape[-1]} classes "
                        f"but the teacher takes {teacher.input_shape[1:]} -> {teacher.output_shape[-1]}")
    return model


def is_cloneable(model: keras.Model) -> bool:
    return not any(isinstance(layer, keras.layers.TFSMLayer) for layer in model.layers)


def input_size(model: keras.Model) -> tuple[int | None, int | None, int | None]:
    shape = model.input_shape
    if isinstance(shape, list):
        shape = shape[0]
    return tuple(shape[1:4])


def num_outputs(model: keras.Model) -> int:
    return int(model.output_shape[-1])


def check_teacher_matches(model: keras.Model, image_size: int, num_classes: int, source: str) -> None:
    h, w, c = input_size(model)
    if c != 3:
        raise UserError(f"{source}: the teacher takes {c} channels; it must take 3 (RGB)")
    if (h is not None and h != image_size) or (w is not None and w != image_size):
        raise UserError(f"{source}: the teacher takes {h}x{w} images but the data is {image_size}x{image_size} "
                        f"(set --image_size={h})")
    if num_outputs(model) != num_classes:
        raise UserError(f"{source}: the teacher has {num_outputs(model)} classes but the data has {num_classes}")


def student_from_teacher(teacher: keras.Model, sync_bn: bool = False) -> keras.Model:
    """Same architecture, same starting weights, every layer trainable. `sync_bn` syncs BN across replicas."""

    def clone_layer(layer):
        config = layer.get_config()
        config["trainable"] = True
        if sync_bn and isinstance(layer, layers.BatchNormalization):
            config["synchronized"] = True
        return layer.__class__.from_config(config)

    student = keras.models.clone_model(teacher, clone_function=clone_layer)
    student.set_weights(teacher.get_weights())
    student.trainable = True
    if not student.trainable_variables:
        raise RuntimeError("the student has no trainable variables after cloning the teacher")
    return student


def freeze(model: keras.Model) -> keras.Model:
    model.trainable = False
    for layer in model.layers:
        layer.trainable = False
    return model


def set_trainable_prefix(student: keras.Model, k: int | None) -> list[str]:
    """Train only the first k residual stages / inverted-residual blocks (None: all). Returns the trainable layers.

    The stem counts with stage 1. The classifier stays frozen too unless k is None: the ablation asks
    whether adapting the early layers to RAW is enough.
    """
    if k is None:
        student.trainable = True
        return [layer.name for layer in student.layers if layer.weights]
    units = _units(student)
    if not 1 <= k <= len(units):
        raise UserError(f"--finetune_first: k={k} but the model has {len(units)} stages/blocks")
    allowed = set().union(*units[:k])
    names = []
    for layer in student.layers:
        layer.trainable = layer.name in allowed
        if layer.trainable and layer.weights:
            names.append(layer.name)
    return names


def _units(model: keras.Model) -> list[set]:
    """Ordered groups of layer names: stem+stage1 (ResNet) / stem+block1 (MobileNetV2), then each stage/block."""
    groups: dict[str, set] = {}
    order: list[str] = []
    for layer in model.layers:
        key = _unit_key(layer.name)
        if key not in groups:
            groups[key] = set()
            order.append(key)
        groups[key].add(layer.name)
    body = [k for k in order if k.startswith("stage") or k.startswith("block")]
    if not body:
        raise UserError(f"model {model.name!r} has no stage*/block* layers; cannot fine-tune only its first layers")
    units = [groups[k] for k in body]
    units[0] = units[0] | groups.get("__stem", set())
    return units


def _unit_key(name: str) -> str:
    """The stage/block a layer belongs to. Besides this project's names (`stage2_block1_conv1`, `block3_dw`), knows
    keras.applications.MobileNetV2's: stem `Conv1`/`bn_Conv1`/`Conv1_relu`, first block `expanded_conv_*`, then
    `block_<n>_*`, so its ablation counts the same 17 blocks as ours."""
    parts = name.split("_")
    if parts[0] in ("stem", "image", "Conv1") or name == "bn_Conv1":
        return "__stem"
    if name.startswith("expanded_conv"):
        return "block0"
    if parts[0] == "block" and len(parts) > 1 and parts[1].isdigit():
        return f"block{parts[1]}"
    return parts[0]


def param_count(model: keras.Model) -> int:
    return int(sum(np.prod(v.shape) for v in model.weights))


def file_size(path) -> int:
    return os.path.getsize(path)
