"""Flag definitions shared by the training entry points (train, experiments). Defined on request, not at import."""

from __future__ import annotations

from absl import flags

from isp_keras import bayer, distribute
from isp_keras.config import TrainConfig

_D = TrainConfig()


def define_train_flags(flag_values: flags.FlagValues | None = None) -> None:
    """Define the shared training flags in `flag_values` (default: the global FLAGS; tests pass a fresh one)."""
    fv = dict(flag_values=flag_values if flag_values is not None else flags.FLAGS)
    flags.DEFINE_string("dataset", _D.dataset, "embedded | folder:PATH | tfds:NAME | records:PATH", **fv)
    flags.DEFINE_string("teacher", _D.teacher,
                        "keras.applications name (ImageNet weights), .keras file or SavedModel.", **fv)
    flags.DEFINE_string("student_init", _D.student_init,
                        "A .keras model the student starts from (architecture and weights); needed when --teacher "
                        "is a SavedModel, which cannot be cloned. Default: the teacher itself.", **fv)
    flags.DEFINE_string("model_dir", "", "Run directory (default: runs/<name>-noise<std>-seed<seed>).", **fv)
    flags.DEFINE_float("alpha", _D.alpha, "Weight of the hard-label cross-entropy, in [0, 1].", **fv)
    flags.DEFINE_float("temperature", _D.temperature, "Distillation temperature T > 0.", **fv)
    flags.DEFINE_enum("hard_labels", _D.hard_labels, ["gt", "teacher"], "Hard labels: ground truth or teacher argmax.",
                      **fv)
    flags.DEFINE_float("noise_std", _D.noise_std, "Gaussian noise std added to the [0,1] mosaic.", **fv)
    flags.DEFINE_enum("cfa", _D.cfa, list(bayer.CFA_PATTERNS), "Bayer CFA pattern.", **fv)
    flags.DEFINE_enum("sensor", _D.sensor, ["gaussian", "realistic"],
                      "RAW simulator: gaussian (--noise_std) or realistic (unprocessing + shot/read noise).", **fv)
    flags.DEFINE_integer("seed", _D.seed, "Seed (data order, augmentation, noise, initialisation).", **fv)
    flags.DEFINE_integer("epochs", _D.epochs, "Training epochs per student.", **fv)
    flags.DEFINE_integer("batch_size", _D.batch_size, "Global batch size.", **fv)
    flags.DEFINE_float("lr", _D.lr, "Peak learning rate (Nesterov SGD, warmup then cosine).", **fv)
    flags.DEFINE_float("weight_decay", _D.weight_decay, "Weight decay.", **fv)
    flags.DEFINE_float("warmup_epochs", _D.warmup_epochs, "Linear warmup length in epochs.", **fv)
    flags.DEFINE_integer("image_size", None, "Input size (default: the teacher's).", **fv)
    flags.DEFINE_integer("train_take", None, "Use only the first N training examples.", **fv)
    flags.DEFINE_integer("test_take", None, "Evaluate on the first N test examples.", **fv)
    flags.DEFINE_integer("stats_images", _D.stats_images, "Training images used for the per-site statistics.", **fv)
    flags.DEFINE_enum("strategy", _D.strategy, list(distribute.STRATEGIES), "tf.distribute strategy.", **fv)
    flags.DEFINE_integer("cpu_replicas", 2, "Logical CPU devices for --strategy=mirrored without GPUs.", **fv)
    flags.DEFINE_string("tpu", _D.tpu, "--strategy=tpu: TPU name or grpc:// address ('' or 'local': this TPU VM).",
                        **fv)
    flags.DEFINE_string("data_service", _D.data_service,
                        "grpc://HOST:PORT of a tf.data service dispatcher that runs the training pipeline.", **fv)
    flags.DEFINE_boolean("cached_logits", _D.cached_logits,
                         "Compute the teacher's logits once and train from them (needs --noaugment).", **fv)
    flags.DEFINE_boolean("augment", _D.augment, "Random crop + flip of the training RGB (off: deterministic "
                         "teacher input).", **fv)
    flags.DEFINE_boolean("overwrite", False, "Replace a finished run in --model_dir.", **fv)
    flags.DEFINE_boolean("strict", False, "Stop at the first unreadable input instead of skipping it.", **fv)
    flags.DEFINE_integer("checkpoint_steps", _D.checkpoint_steps,
                         "Also checkpoint every N optimizer steps (0: only at epoch ends and on SIGTERM/Ctrl-C).", **fv)
    flags.DEFINE_integer("checkpoint_epochs", _D.checkpoint_epochs, "Checkpoint every N epochs (and after the last).",
                         **fv)
