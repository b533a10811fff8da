"""Students: a trainable clone of the teacher with its weights (or of --student_init), and fine-tuning only the
first k stages/blocks."""

from __future__ import annotations

import re
from pathlib import Path

import keras
import numpy as np
from keras import layers

from isp_keras.errors import UserError
from isp_keras.models import packed, teachers


def load_student_init(path, teacher: keras.Model, teacher_spec: teachers.TeacherSpec | None = None) -> keras.Model:
    """--student_init: the model the student starts from, architecture and weights: a .keras file, or a .tflite
    classifier (rebuilt as a float Keras model), e.g. a smaller network than the teacher. Its outputs must be the
    teacher's (the same classes, and the same RGB normalisation where both files name theirs); its input may be
    another square, even size: the student then sees the mosaic of the scene at that size."""
    path = Path(path)
    spec = None
    if path.suffix.lower() == ".tflite":
        if not path.is_file():
            raise UserError(f"--student_init={path}: no such file")
        from isp_keras.models import tflite_import

        model, spec = tflite_import.import_tflite(path)
    else:
        model = teachers.load_model_file(path)
    if isinstance(model, keras.layers.TFSMLayer):
        raise UserError(f"--student_init={path}: must be a .keras or .tflite file (a SavedModel has no architecture)")
    h, w, c = teachers.input_size(model)
    if c != 3 or h is None or h != w or h % 2:
        raise UserError(
            f"--student_init={path}: takes {h}x{w}x{c} images; a student needs a square RGB input of even size "
            "(the Bayer pattern tiles 2x2)"
        )
    if model.output_shape[-1] != teacher.output_shape[-1]:
        raise UserError(
            f"--student_init={path}: has {model.output_shape[-1]} outputs but the teacher has "
            f"{teacher.output_shape[-1]}; a student must predict the teacher's classes"
        )
    if spec and teacher_spec:
        if spec.get("wnids") and teacher_spec.wnids and list(spec["wnids"]) != list(teacher_spec.wnids):
            raise UserError(f"--student_init={path}: its classes are not the teacher's (WordNet ids differ)")
        theirs = ([round(v, 4) for v in spec["rgb_mean"] + spec["rgb_std"]], spec.get("channel_order", "RGB"))
        ours = ([round(v, 4) for v in teacher_spec.rgb_mean + teacher_spec.rgb_std], teacher_spec.channel_order)
        # Quantised files state their input scale to a step of 1/255 (mean 128/255 or 127/255 for 0.5).
        if not np.allclose(theirs[0], ours[0], atol=0.01) or theirs[1] != ours[1]:
            raise UserError(
                f"--student_init={path}: expects RGB normalised by mean and std {theirs[0]} ({theirs[1]}), the "
                f"teacher by {ours[0]} ({ours[1]}); the RAW input would be scaled for one of them only"
            )
    return model


def student_from_teacher(
    teacher: keras.Model, sync_bn: bool = False, packing: packed.Packing | None = None
) -> keras.Model:
    """Same architecture, same starting weights, every layer trainable. `sync_bn` syncs BN across replicas.

    `packing`: a packed-Bayer student, which takes the mosaic's 2x2 tiles and whose first convolution is the
    teacher's composed with the infill and the per-site normalisation (models.packed)."""

    def clone_layer(layer):
        config = layer.get_config()
        config["trainable"] = True
        if sync_bn and isinstance(layer, layers.BatchNormalization):
            config["synchronized"] = True
        return layer.__class__.from_config(config)

    if packing is not None:
        student = packed.pack_model(teacher, packing, clone_layer)
    else:
        student = keras.models.clone_model(teacher, clone_function=clone_layer)
        student.set_weights(teacher.get_weights())
    student.trainable = True
    if not student.trainable_variables:
        raise RuntimeError("the student has no trainable variables after cloning the teacher")
    return student


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


# models.tflite_import's layer names: op<index>_<op>, with a suffix for the layers an op adds (_relu6, _round, ...).
_IMPORTED = re.compile(r"^op\d+_(depthwise_conv_2d|conv_2d|[a-z0-9_]+)(.*)$")


def _imported_units(model: keras.Model) -> list[set] | None:
    """Blocks of a model rebuilt from a TFLite file (layers `opNNN_<op>`, models.tflite_import), or None.

    A block ends at the first CONV_2D after a DEPTHWISE_CONV_2D (MobileNetV1's depthwise + pointwise pair,
    MobileNetV2's expansion + depthwise + projection, its ADD joining the block it closes); the next convolution
    starts a new one. The stem joins the first block; the convolutions after the last block (head and classifier)
    belong to none."""
    ops = [(layer.name, _IMPORTED.match(layer.name)) for layer in model.layers if layer.name != "image"]
    if not ops or not all(match for _, match in ops):
        return None
    units: list[set] = [set()]
    depthwise = closed = False
    for name, match in ops:
        op, suffix = match.group(1), match.group(2)
        if closed and op in ("conv_2d", "depthwise_conv_2d") and not suffix:
            units.append(set())
            depthwise = closed = False
        units[-1].add(name)
        if op == "depthwise_conv_2d":
            depthwise = True
        elif op == "conv_2d" and depthwise:
            closed = True
    if not closed:  # the trailing layers hold no block: the head
        units.pop()
    return units


def _units(model: keras.Model) -> list[set]:
    """Ordered groups of layer names: stem+stage1 (ResNet) / stem+block1 (MobileNetV2), then each stage/block."""
    imported = _imported_units(model)
    if imported:
        return imported
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


def init_identity_batchnorm(model: keras.Model, inputs) -> keras.Model:
    """Fit every BatchNormalization of `model` to the statistics of its input on `inputs` (a batch of the student's
    input) so that it leaves the function unchanged: moving mean and variance = the batch's per-channel mean and
    variance, scale = sqrt(variance + epsilon), shift = mean. Inference is then exactly the BN-free network and
    training (batch statistics) close to it at the start, while the network regains BatchNorm's tolerance of larger
    learning rates. The BN layers are the identity before and after, so one forward pass gives every input."""
    bns = [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]
    if not bns:
        return model
    # Only the per-channel moments leave the probe, not the activations.
    moments = [[keras.ops.mean(bn.input, axis=(0, 1, 2)), keras.ops.var(bn.input, axis=(0, 1, 2))] for bn in bns]
    probe = keras.Model(model.input, moments)
    for bn, (mean, var) in zip(bns, probe(inputs, training=False)):
        mean, var = np.asarray(mean, np.float32), np.asarray(var, np.float32)
        bn.set_weights([np.sqrt(var + bn.epsilon), mean, mean, var])
    return model
