"""Benchmarks (not tests): `python -m isp_keras.benchmark --suite=deploy|train --json=PATH`.

Each suite lives in its own module (bench_deploy, bench_train) with `define_flags()` and `run(FLAGS)`,
which returns {"figure name": value}.
"""

from __future__ import annotations

import json

from absl import app, flags

from isp_keras import fsutil
from isp_keras.errors import run_main

FLAGS = flags.FLAGS
flags.DEFINE_enum("suite", "deploy", ["deploy", "train"], "Which benchmark suite.")
flags.DEFINE_string("json", "", "Also write the figures as JSON {name: value} to this path.")


def main(argv):
    del argv
    if FLAGS.suite == "deploy":
        from isp_keras.bench import deploy as suite
    else:
        from isp_keras.bench import train as suite
    figures = suite.run(FLAGS)
    print(json.dumps(figures, indent=2))
    if FLAGS.json:
        fsutil.write_json_atomic(FLAGS.json, figures)


if __name__ == "__main__":
    from isp_keras.bench import deploy as bench_deploy
    from isp_keras.bench import train as bench_train

    bench_deploy.define_flags()
    bench_train.define_flags()
    app.run(run_main(main))
