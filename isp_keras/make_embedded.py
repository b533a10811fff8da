"""Rebuild data/embedded (or a full copy for teacher training) from the CIFAR-10 JPEG archive.

  python -m isp_keras.make_embedded --archive=../shared/datasets/cifar10-jpeg.tar.gz --out=data/embedded \
      --train_per_class=2000 --test_per_class=1000
"""

from __future__ import annotations

from isp_keras import cli
from isp_keras.data.config import EmbeddedConfig


def run(cfg: EmbeddedConfig) -> dict:
    from isp_keras.data import embedded

    index = embedded.build(cfg)
    for split, info in index["splits"].items():
        print(f"{split}: {info['count']} images in {len(info['files'])} shards")
    for info in index["splits"].values():
        for name, digest in info["files"].items():
            print(f"sha256 {digest}  {cfg.out}/{name}")
    return index


if __name__ == "__main__":
    cli.main(EmbeddedConfig, run)
