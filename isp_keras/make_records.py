"""Write any source to sharded TFRecords for fast, shardable reading.

python -m isp_keras.make_records --dataset=folder:/data/imagenet --out=/data/imagenet_records --max_size=256
python -m isp_keras.train --dataset=records:/data/imagenet_records ...
"""

from __future__ import annotations

from isp_keras import cli
from isp_keras.data.config import RecordsConfig


def run(cfg: RecordsConfig) -> dict:
    from isp_keras.data import convert

    index = convert.write(cfg.dataset, cfg.out, cfg.examples_per_shard, cfg.format, cfg.quality, cfg.max_size, cfg.take)
    for name, split in index["splits"].items():
        print(f"{cfg.out}: {name} {split['count']} images in {len(split['files'])} shard(s)")
    return index


if __name__ == "__main__":
    cli.main(RecordsConfig, run)
