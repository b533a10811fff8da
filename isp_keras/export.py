"""Export a trained student for deployment: `python -m isp_keras.export --student=runs/train --out=export`.

Writes, atomically (a temporary directory renamed into place): a SavedModel taking the Bayer mosaic
(`serving_default`: float32 [batch, H, W, 1] in [0, 1]; `serving_uint16`: sensor counts with the black/white
levels given here), model_float32.tflite, model_int8.tflite (full integer, calibrated on mosaics of the training
pipeline), model_dynamic.tflite, labels.txt and manifest.json (classes, input, CFA, normalisation, parity, sha256).
Then checks parity on real test mosaics and publishes nothing if a gate fails.
"""

from __future__ import annotations

from isp_keras import cli
from isp_keras.deploy.config import ExportConfig


def run(cfg: ExportConfig) -> dict:
    from isp_keras.deploy import export, serving

    manifest = export.run(cfg)
    p = manifest["parity"]
    print(
        f"wrote {cfg.out}: SavedModel ({', '.join(manifest['signatures'])}), "
        f"{', '.join(manifest['tflite'].values())}, {serving.LABELS}, {serving.MANIFEST}"
    )
    print(
        f"parity on {p['parity_examples']} test mosaics ({p['dataset']}): SavedModel max |dp| "
        f"{p['saved_model_max_abs_prob_diff']:.2e}, float32 TFLite max |dp| {p['float32_max_abs_prob_diff']:.2e}, "
        f"int8 top-1 agreement {p['int8_top1_agreement']:.2f}%"
        + (
            f", int8 with float head {p['int8_float_head_top1_agreement']:.2f}%"
            if "int8_float_head_top1_agreement" in p
            else ""
        )
        + (f", dynamic top-1 agreement {p['dynamic_top1_agreement']:.2f}%" if "dynamic_top1_agreement" in p else "")
    )
    return manifest


if __name__ == "__main__":
    cli.main(ExportConfig, run)
