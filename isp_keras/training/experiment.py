"""One row's machinery, used by the experiment runner: set up data and teacher, evaluate the teacher baselines,
train a student row (distilled, GT labels, teacher labels, fine-tune first k, quantisation-aware), save the student."""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path

import keras
from absl import logging

from isp_keras import console, fsutil
from isp_keras.data import normalisation, pipeline, relabel, sources
from isp_keras.errors import UserError
from isp_keras.models import adapter, packed, students, teachers
from isp_keras.training import checkpoint, distiller, logs, quantise, schedule, student_file
from isp_keras.training.config import TrainConfig


@dataclasses.dataclass
class Setup:
    cfg: TrainConfig
    source: sources.Source
    teacher: keras.Model
    spec: teachers.TeacherSpec
    norm: normalisation.Normalisation
    pipeline: pipeline.PipelineConfig
    student_init: keras.Model | None = None  # what the student is cloned from (default: the teacher)
    # The test batches by student input, built once: every evaluation of the level iterates the same dataset, so
    # its in-memory cache decodes the test images once.
    test_sets: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def student_source(self) -> keras.Model:
        return self.student_init if self.student_init is not None else self.teacher

    def train_ds(self, start_step: int = 0, epochs: int | None = None):
        """A row's batches from global step `start_step` on, over `epochs` epochs (default: the config's), the
        same data a run that never stopped sees.

        --cached_logits: the teacher input is replaced by stored teacher logits (computed once, see logit_cache);
        --data_service: the pipeline runs on tf.data service workers (see data_service)."""
        logits = self.cached_teacher_logits() if self.cfg.cached_logits else None
        ds = pipeline.build(
            self.source,
            self.source.train_split,
            self.pipeline,
            training=True,
            norm=self.norm,
            steps_per_epoch=self.steps_per_epoch(),
            start_step=start_step,
            epochs=epochs or self.cfg.epochs,
            teacher_logits=logits,
        )
        if self.cfg.data_service:
            from isp_keras.data import service

            ds = service.distribute(ds, self.cfg.data_service)
        return ds

    def cached_teacher_logits(self):
        from isp_keras.data import logit_cache

        return logit_cache.load_or_compute(
            self.teacher,
            self.cfg.teacher,
            self.source,
            self.source.train_split,
            self.pipeline,
            self.norm,
            Path(self.cfg.model_dir) / "teacher_logits",
        )

    def test_ds(self, student_input: str | None = None, teacher_size: bool = False, mode: str = "distill"):
        """The test batches; `student_input` overrides the run's (a baseline of an RGB model sees the infill),
        `teacher_size` puts the student input at the teacher's size (the teacher on RAW), `mode` "student_rgb"
        gives the clean RGB at the student's size in place of the RAW."""
        kind = student_input or self.pipeline.student_input
        key = (kind, teacher_size, mode)
        if key not in self.test_sets:
            cfg = dataclasses.replace(
                self.pipeline,
                take=self.cfg.test_take,
                batch_size=max(self.pipeline.batch_size, 256),
                student_input=kind,
                student_size=None if teacher_size else self.pipeline.student_size,
            )
            self.test_sets[key] = pipeline.build(
                self.source, self.source.test_split, cfg, training=False, norm=self.norm, mode=mode
            )
        return self.test_sets[key]

    def packing(self) -> packed.Packing | None:
        """What a packed student's first layer folds in (None for an infill student): the per-site statistics of
        its input, after the adapter's initial curve when it starts from one."""
        if self.pipeline.student_input != "packed":
            return None
        curve = self.cfg.initial_curve()
        if curve and self.norm.curve != curve:
            raise ValueError("the normalisation has no statistics for the adapter's initial curve (see setup)")
        mean, std = self.norm.student_stats(curve=bool(curve))
        return packed.Packing(
            self.cfg.cfa,
            tuple(mean),
            tuple(std),
            self.norm.channel_order,
            self.pipeline.student_image_size,
            self.cfg.raw_adapter,
            tuple(curve) or None,
        )

    def steps_per_epoch(self) -> int:
        n = self.source.counts[self.source.train_split]
        if self.cfg.train_take:
            n = min(n, self.cfg.train_take)
        steps = n // self.pipeline.batch_size
        if steps < 1:
            raise UserError(
                f"{self.source.name}: {n} training images, fewer than one batch of {self.pipeline.batch_size}"
            )
        return steps


@dataclasses.dataclass
class PairsSetup(Setup):
    """Table 2's Setup: batches of aligned RAW/RGB patches from a pair cache (data.pair_cache) instead of the
    pipeline."""

    cache: str = ""

    def batches(self, split, batch_size, training, start_step=0):
        from isp_keras.data import pair_cache

        return pair_cache.batches(
            self.cache,
            split,
            batch_size=batch_size,
            cfa=self.cfg.cfa,
            norm=self.norm,
            training=training,
            seed=self.cfg.seed,
            start_step=start_step,
        )

    def train_ds(self, start_step: int = 0, epochs: int | None = None):
        return self.batches("train", self.pipeline.batch_size, True, start_step)

    def test_ds(self, student_input: str | None = None, teacher_size: bool = False, mode: str = "distill"):
        # Table 2 takes infill students of the teacher's size only (others are refused), so the overrides change
        # nothing here.
        return self.batches("test", max(self.pipeline.batch_size, 256), False)

    def steps_per_epoch(self) -> int:
        n = self.source.counts["train"]
        if n < self.pipeline.batch_size:
            raise UserError(f"{self.cache}: {n} training patches, fewer than one batch of {self.pipeline.batch_size}")
        return n // self.pipeline.batch_size


def pipeline_config(cfg: TrainConfig, image_size: int, student_size: int | None = None) -> pipeline.PipelineConfig:
    """The training pipeline's settings from a run's config (`student_size`: a student input size other than the
    teacher's `image_size`)."""
    return pipeline.PipelineConfig(
        image_size=image_size,
        batch_size=cfg.batch_size,
        cfa=cfg.cfa,
        noise_std=cfg.noise_std,
        seed=cfg.seed,
        take=cfg.train_take,
        sensor=cfg.sensor,
        augment=cfg.augment,
        student_input=cfg.student_input,
        student_size=student_size if student_size != image_size else None,
    )


def build_setup(cfg: TrainConfig, norm: normalisation.Normalisation | None = None) -> Setup:
    """Load data and teacher, check they fit each other, compute (or reuse) the normalisation statistics."""
    source = sources.get_source(cfg.dataset, seed=cfg.seed, strict=cfg.strict, per_class=cfg.per_class())
    if cfg.holdout_fraction:
        source = relabel.holdout(source, cfg.holdout_fraction, cfg.seed)
    teacher, spec = teachers.load_teacher(cfg.teacher)
    image_size = cfg.image_size or (spec.image_size if spec else teachers.input_size(teacher)[0])
    if image_size is None:
        raise UserError(f"--teacher={cfg.teacher}: the teacher takes any size; set --image_size")
    if image_size % 2 and cfg.student_input == "packed":
        raise UserError(f"--student_input=packed: image size {image_size} is odd; packing needs even sides")
    if image_size % 2:
        raise UserError(f"--image_size={image_size}: must be even (the Bayer pattern tiles 2x2)")
    teachers.check_teacher_matches(teacher, image_size, None, cfg.teacher)
    source = label_space(source, teacher, spec, cfg)
    student_init = students.load_student_init(cfg.student_init, teacher, spec) if cfg.student_init else None
    if student_init is None and not teachers.is_cloneable(teacher):
        raise UserError(
            f"--teacher={cfg.teacher}: a SavedModel teacher cannot be cloned into a student; give "
            f"--student_init=MODEL.keras (same architecture, the weights the student starts from)"
        )
    teachers.freeze(teacher)
    pcfg = pipeline_config(cfg, image_size, teachers.input_size(student_init)[0] if student_init else None)
    if norm is None:
        if spec is None:
            logging.warning("%s has no sidecar JSON; teacher RGB statistics are computed from the data", cfg.teacher)
        norm = pipeline.compute_normalisation(
            source,
            pcfg,
            cfg.stats_images,
            rgb_mean=spec.rgb_mean if spec else None,
            rgb_std=spec.rgb_std if spec else None,
            channel_order=spec.channel_order if spec else "RGB",
            raw_scale=cfg.raw_scale,
        )
    curve = cfg.initial_curve()
    if curve and norm.curve != curve:
        # The packed stem normalises what the adapter gives it: at the start, the curve of the mosaic.
        layer = adapter.ToneCurve(curve)
        norm = pipeline.compute_curve_statistics(source, pcfg, norm, curve, layer, cfg.stats_images)
    if spec is None:
        spec = teachers.TeacherSpec(
            image_size, len(source.classes), norm.rgb_mean, norm.rgb_std, classes=source.classes, source=cfg.teacher
        )
    if cfg.student_batchnorm:
        student_init = batchnorm_student(cfg, source, pcfg, norm)
    return Setup(cfg, source, teacher, spec, norm, pcfg, student_init)


def batchnorm_student(cfg: TrainConfig, source, pcfg, norm, count: int = 64) -> keras.Model:
    """--student_batchnorm: the .tflite teacher rebuilt with identity BatchNorm layers, fitted to `count` RAW
    training inputs (students.init_identity_batchnorm), as the model the students start from."""
    from isp_keras import paths
    from isp_keras.models import tflite_import

    path = Path(paths.teacher_path(cfg.teacher))
    if path.suffix.lower() != ".tflite" or cfg.student_init:
        raise UserError(
            f"--student_batchnorm: restores the BatchNorm a TFLite file folded away; needs --teacher=FILE.tflite "
            f"and no --student_init (got --teacher={cfg.teacher})"
        )
    model, _ = tflite_import.import_tflite(path, batchnorm=True)
    count = min(count, source.counts[source.train_split])  # one whole batch (training batches drop remainders)
    # The imported model takes the infilled image; a packed student is made from it afterwards (build_student).
    probe_cfg = dataclasses.replace(pcfg, take=count, batch_size=count, cache=False, student_input="infill")
    (inputs, _), _ = next(iter(pipeline.build(source, source.train_split, probe_cfg, training=True, norm=norm)))
    console.progress("student: BatchNorm restored after %d convolutions", sum("_bn" in x.name for x in model.layers))
    return students.init_identity_batchnorm(model, inputs)


def label_space(source: sources.Source, teacher: keras.Model, spec, cfg: TrainConfig) -> sources.Source:
    """The data's labels as indices of the teacher's outputs (matched by WordNet id or class name)."""
    outputs = teachers.num_outputs(teacher)
    names = list(spec.classes) if spec and spec.classes else None
    if names is None:
        if source.labelled and len(source.classes) != outputs:
            raise UserError(
                f"--teacher={cfg.teacher}: has {outputs} outputs but --dataset={cfg.dataset} has "
                f"{len(source.classes)} classes, and the teacher names none of its classes (no sidecar JSON)"
            )
        names = list(source.classes) if source.labelled else [str(i) for i in range(outputs)]
    return relabel.in_label_space(source, names, spec.wnids if spec else None, what=f"--teacher={cfg.teacher}")


def evaluate(setup: Setup, model: keras.Model | None = None, on: str = "student", **test_set) -> dict:
    """`model` (default: the teacher) on the test set (`Setup.test_ds(**test_set)`), against the teacher on RGB."""
    ds = setup.test_ds(**test_set)
    return distiller.evaluate(ds, setup.teacher, model, on=on, subset=setup.source.subset)


def baseline_row(setup: Setup, name: str) -> dict:
    """A row that trains nothing: the teacher on clean RGB or on the RAW (infilled, at its own size), or the
    --student_init model on clean RGB or on the RAW at the student's size."""
    if name == "teacher_clean":
        return metric_row(name, evaluate(setup, on="teacher_rgb"))
    if name == "teacher_raw":
        return metric_row(name, evaluate(setup, setup.teacher, student_input="infill", teacher_size=True))
    if setup.student_init is None:
        raise UserError(f"--rows={name}: evaluates the --student_init model; give --student_init")
    if name == "student_clean":
        return metric_row(name, evaluate(setup, setup.student_init, student_input="infill", mode="student_rgb"))
    if name == "student_raw":
        return metric_row(name, evaluate(setup, setup.student_init, student_input="infill"))
    raise ValueError(f"{name!r} is not a baseline row")


METRICS = ("top1", "top5", "top1_subset", "top5_subset", "agreement", "agreement_top5")


def metric_row(name, metrics) -> dict:
    """A results row: name and the percentages `evaluate` gave (None where not measurable, e.g. no labels)."""
    row = {"name": name}
    for key in METRICS:
        if key in metrics:
            row[key] = None if metrics[key] is None else round(float(metrics[key]), 3)
    return row


def build_student(setup: Setup, start_from: keras.Model | None, sync_bn: bool) -> keras.Model:
    if start_from is not None:  # an earlier row's student, already packed if the run's students are
        return students.student_from_teacher(start_from, sync_bn=sync_bn)
    return students.student_from_teacher(setup.student_source(), sync_bn=sync_bn, packing=setup.packing())


def adapter_gradient_scales(student: keras.Model, scale: float) -> dict:
    """{variable path: `scale`} for the student's RAW adapter (--raw_adapter_lr_scale), empty at 1."""
    if scale == 1:
        return {}
    return {v.path: scale for layer in adapter.parts(student).values() for v in layer.trainable_weights}


def train_student(
    setup: Setup, row, row_dir, start_from: keras.Model | None = None, step_offset: int = 0, verbose: int | str = "auto"
) -> tuple[dict, keras.Model]:
    """Train one student row (`plans.Row`: its loss, epochs, learning rate, fine-tuned prefix and whether it is
    quantisation-aware), resumably in `row_dir`; returns (metrics row, student).

    The student starts from the teacher's weights (or `start_from`'s). Quantisation-aware rows train through
    quantise.quantisation_aware (int8 simulated, BN frozen), then snap the weights to their int8 grid."""
    from isp_keras.training import distribute

    cfg = setup.cfg
    keras.utils.set_random_seed(cfg.seed)
    strategy = distribute.get_strategy(cfg.strategy, cfg.tpu)
    row_dir = distribute.worker_dir(strategy, Path(row_dir))
    steps = setup.steps_per_epoch()
    with strategy.scope():
        student = build_student(setup, start_from, sync_bn=strategy.num_replicas_in_sync > 1)
        trainable = students.set_trainable_prefix(student, row.finetune_first)
        trained = quantise.quantisation_aware(student) if row.quantisation_aware else student
        optimizer = schedule.sgd(
            row.epochs * steps, row.lr, cfg.weight_decay, warmup_steps=int(row.warmup_epochs * steps)
        )
        model = distiller.Distiller(
            trained,
            start_from if row.from_float else setup.teacher,
            alpha=row.alpha,
            temperature=cfg.temperature,
            hard_labels=row.hard_labels,
            cached_logits=cfg.cached_logits and not row.from_float,
            gradient_scales=adapter_gradient_scales(student, cfg.raw_adapter_lr_scale),
            teacher_sees_student_input=row.from_float,
        )
        model.compile(optimizer=optimizer)
        state = checkpoint.read_checkpoint_state(row_dir)
        if state:
            trained.load_weights(Path(state["path"]) / "student.weights.h5")
            distiller.load_optimizer_state(
                optimizer, trained.trainable_variables, Path(state["path"]) / "optimizer.npz"
            )
            console.progress("resuming %s after epoch %d from %s", row.name, state["epochs_done"], state["path"])
    start_step = int(state.get("step", state["epochs_done"] * steps)) if state else 0
    console.progress(
        "%s: training %d layers of %d for %d epochs x %d steps",
        row.name,
        len(trainable),
        len(student.layers),
        row.epochs,
        steps,
    )

    def save(folder):
        trained.save_weights(folder / "student.weights.h5")
        distiller.save_optimizer_state(optimizer, folder / "optimizer.npz")

    def validate():
        if saver.terminated or nan_guard.bad_step is not None:  # stopping: save, do not evaluate
            return None
        return evaluate(setup, trained)

    nan_guard = checkpoint.StopOnNaN()
    saver = checkpoint.AtomicCheckpoint(
        row_dir, save, steps_per_epoch=steps, every_steps=cfg.checkpoint_steps, every_epochs=cfg.checkpoint_epochs
    )
    scalars = logs.ScalarLog(row_dir / "logs", cfg.log_steps, steps, step_offset, row.epochs, validate)
    callbacks = [saver, nan_guard, scalars]
    fit = functools.partial(model.fit, shuffle=False)  # the pipeline shuffles, seeded per epoch
    if distribute.needs_custom_loop(strategy):  # Keras fit fails under MultiWorkerMirroredStrategy
        from isp_keras.training import custom_loop

        fit = functools.partial(custom_loop.fit, model, strategy=strategy)
    epoch, done_in_epoch = divmod(start_step, steps)
    if done_in_epoch and epoch < row.epochs:  # resumed mid-epoch: finish that epoch, then whole ones
        scalars.done_in_epoch = done_in_epoch
        fit(
            setup.train_ds(start_step, row.epochs),
            epochs=epoch + 1,
            initial_epoch=epoch,
            steps_per_epoch=steps - done_in_epoch,
            verbose=verbose,
            callbacks=callbacks,
        )
        epoch += 1
    if epoch < row.epochs and nan_guard.bad_step is None and not saver.terminated:
        fit(
            setup.train_ds(epoch * steps, row.epochs),
            epochs=row.epochs,
            initial_epoch=epoch,
            steps_per_epoch=steps,
            verbose=verbose,
            callbacks=callbacks,
        )
    if nan_guard.bad_step is not None:
        kept = checkpoint.read_checkpoint_state(row_dir)
        kept = f"the last good checkpoint ({kept['folder']}) is kept" if kept else "no checkpoint had been saved yet"
        raise UserError(
            f"{row.name}: the loss became NaN/Inf at step {nan_guard.bad_step}; training stopped and "
            f"{kept} in {row_dir} (lower --lr?)"
        )
    if saver.terminated:
        raise checkpoint.Stopped(
            f"{row.name}: stopped by signal {saver.signal} at step {saver.saved_step}, "
            f"checkpoint saved in {row_dir}; rerun the same command to resume",
            saver.signal,
        )
    if row.quantisation_aware:
        quantise.snap_weights(student)
        quantise.unfreeze_batchnorm(student)
    metrics = evaluate(setup, student)
    scalars.final(metrics)
    scalars.close()
    return metric_row(row.name, metrics), student


def save_student(student: keras.Model, run_dir, setup: Setup) -> Path:
    """The student alone (never the Distiller) plus what serving needs: normalisation, CFA, classes."""
    run_dir = Path(run_dir)
    path = run_dir / "student.keras"
    tmp = run_dir / ".student.tmp.keras"
    plain = keras.models.clone_model(student)  # drops optimizer state and sync-BN flags from training
    plain.set_weights(student.get_weights())
    plain.trainable = True
    try:
        plain.save(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise fsutil.write_error(path, exc) from exc
    student_file.write(
        run_dir / "student.json",
        student_file.StudentFile(
            cfa=setup.cfg.cfa,
            image_size=setup.pipeline.student_image_size,
            classes=list(setup.source.classes),
            normalisation=setup.norm,
            student_input=setup.pipeline.student_input,
            raw_adapter=setup.cfg.raw_adapter,
            noise_std=setup.cfg.noise_std,
            sensor=setup.cfg.sensor,
            wnids=list(setup.spec.wnids) if setup.spec.wnids else None,
            teacher=setup.cfg.teacher,
            dataset=setup.cfg.dataset,
        ),
    )
    return path
