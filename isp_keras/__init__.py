"""isp_keras: ISP Distillation (RAW-input classifiers distilled from RGB teachers) in TensorFlow/Keras 3."""

__version__ = "0.1.0"
