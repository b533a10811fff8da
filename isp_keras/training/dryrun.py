"""The dry run: what a command would do, checked as far as possible without reading any data or training."""

from __future__ import annotations

from pathlib import Path

from isp_keras import paths
from isp_keras.data import normalisation, pipeline, sources
from isp_keras.models import students, teachers
from isp_keras.training import experiment
from isp_keras.training.config import TrainConfig
from isp_keras.training.plans import Plan, check_ks
from isp_keras.training.rundir import read_row


def plan_text(plan: Plan) -> str:
    """What the command would do, validated as far as possible without reading any data or training."""
    cfg = plan.cfg
    teacher_desc, teacher, spec = _describe_teacher(cfg.teacher)
    data_desc, train_count, num_classes = sources.describe(cfg.dataset)
    image_size = cfg.image_size or (spec.image_size if spec else (teachers.input_size(teacher)[0] if teacher else None))
    if teacher is not None and image_size and num_classes:
        teachers.check_teacher_matches(teacher, image_size, num_classes, cfg.teacher)
    student_size = None
    if cfg.student_init and teacher is not None:
        student_size = teachers.input_size(students.load_student_init(cfg.student_init, teacher, spec))[0]
    ks = [r.finetune_first for r in plan.rows if r.finetune_first]
    if teacher is not None and ks:
        check_ks(teacher, ks)
    steps = "(steps set by the data)"
    if train_count is not None:
        n = min(train_count, cfg.train_take or train_count)
        steps = f"{n // cfg.batch_size} steps ({n} images)"
    noise = ", ".join(f"{s:g}" for s in dict.fromkeys(lvl.cfg.noise_std for lvl in plan.levels))
    lines = [
        f"{plan.kind} (dry run: no data read, nothing trained) -> {plan.out}",
        f"  data:     {data_desc}; test {cfg.test_take or 'all'} images"
        + "".join(f", {n} {split} images per class" for split, n in cfg.per_class().items()),
        f"  teacher:  {teacher_desc}",
        f"  raw:      {image_size or '? (from the teacher)'} px"
        + (f" (the student's {student_size} px)" if student_size not in (None, image_size) else "")
        + f", CFA {cfg.cfa}, "
        + (f"noise std {noise}" if cfg.sensor == "gaussian" else "realistic sensor (shot and read noise)")
        + f", seed {cfg.seed}",
        f"  budget:   per student row {cfg.epochs} epochs x {steps}, batch {cfg.batch_size}; Nesterov SGD lr "
        f"{cfg.lr:g} (warmup {cfg.warmup_epochs:g} epochs, cosine), weight decay {cfg.weight_decay:g}",
    ]
    if image_size:
        inputs = {(lvl.cfg.student_input, lvl.cfg.raw_adapter): lvl.cfg for lvl in plan.levels}
        for (student_input, adapter), level_cfg in inputs.items():
            student_spec, teacher_spec = _pipeline_spec(level_cfg, image_size, student_size)[0]
            front = f" + RAW adapter {adapter}" if adapter != "none" else ""
            which = f" ({student_input}{front})" if len(inputs) > 1 or front else ""
            lines.append(
                f"  pipeline{which}: student input {student_spec.shape} {student_spec.dtype.name}, "
                f"teacher input {teacher_spec.shape} {teacher_spec.dtype.name}"
            )
    if ks and teacher is None:
        lines.append("  k values are checked against the model when the teacher loads")
    lines.append("  rows:")
    for level in plan.levels:
        for row in level.rows or plan.rows:
            done = " [done]" if read_row(level.dir / row.name) else ""
            lines.append(f"    {str(level.dir / row.name) + ':':<52} {row.describe(level.cfg)}{done}")
    return "\n".join(lines)


def _describe_teacher(name: str):
    if name in teachers.KERAS_APPLICATIONS:
        import keras

        model = getattr(keras.applications, name)(weights=None, classifier_activation=None)
        return f"keras.applications.{name} (ImageNet weights, downloaded on the first real run)", model, None
    if Path(paths.teacher_path(name)).exists():
        model, spec = teachers.load_teacher(name)
        arch = spec.arch if spec and spec.arch else model.name
        return f"{name} ({arch}, {teachers.num_outputs(model)} classes)", model, spec
    return f"{name} (not present here; a real run needs it)", None, None


def _pipeline_spec(cfg: TrainConfig, image_size: int, student_size: int | None = None):
    """The training pipeline's element spec, built on an empty stand-in source (traced, never iterated)."""
    import tensorflow as tf

    signature = (tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([], tf.int32))
    stub = sources.Source(
        "dry-run",
        [],
        {},
        None,
        lambda split: tf.data.Dataset.from_generator(lambda: iter(()), output_signature=signature),
    )
    norm = normalisation.Normalisation([0.0] * 3, [1.0] * 3, [0.0] * 3, [1.0] * 3)
    pcfg = experiment.pipeline_config(cfg, image_size, student_size)
    return pipeline.build(stub, "train", pcfg, training=True, norm=norm).element_spec
