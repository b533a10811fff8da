"""tf.data service: move the RAW-simulation pipeline off the training host.

  python -m isp_keras.data_service --port=5050 --workers=2          # a dispatcher and 2 workers on this machine
  python -m isp_keras.data_service --dispatcher=HOST:5050 --workers=4 --worker_host=$(hostname)   # more workers
  python -m isp_keras.train --data_service=grpc://HOST:5050 ...      # the trainer sends its pipeline there

`distribute` applies `tf.data.experimental.service.distribute` in "distributed_epoch" mode (dynamic sharding) to
the whole training pipeline (decode, crop, mosaic, noise, infill, normalisation, batching): the dispatcher hands
out splits of the splittable source and each split is processed by exactly one worker. The training stream
(`datasets.build(..., steps_per_epoch=...)`) splits by epoch, so each epoch is produced whole by one worker with
its own seeds; with several workers, epochs are produced in parallel and their batches reach the trainer
interleaved in arrival order. Workers must be able to read the data files (shared or network file system, GCS).
"""

from __future__ import annotations

import socket
from urllib.parse import urlparse

import tensorflow as tf

from isp_keras.errors import UserError


def parse_address(service: str, flag: str = "--data_service") -> tuple[str, int]:
    """'grpc://HOST:PORT' -> (HOST, PORT), or a UserError naming the flag."""
    parsed = urlparse(service)
    if parsed.scheme != "grpc" or not parsed.hostname or not parsed.port:
        raise UserError(f"{flag}={service}: expected grpc://HOST:PORT (the dispatcher's address)")
    return parsed.hostname, parsed.port


def check_reachable(service: str, timeout: float = 5.0, flag: str = "--data_service") -> None:
    """Fail fast with one line instead of the client retrying against a dispatcher that is not there."""
    host, port = parse_address(service, flag)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise UserError(
            f"{flag}={service}: no dispatcher reachable at {host}:{port} ({exc.strerror or exc}); "
            f"start one with `python -m isp_keras.data_service --port={port}`"
        ) from None


def distribute(ds: tf.data.Dataset, service: str, job_name: str | None = None) -> tf.data.Dataset:
    """Run `ds` on the tf.data service at `service`; each source split is processed by exactly one worker.

    `job_name`: consumers with the same name share one job (e.g. the trainers of one multi-worker run)."""
    check_reachable(service)
    ds = ds.apply(
        tf.data.experimental.service.distribute(
            processing_mode=tf.data.experimental.service.ShardingPolicy.DYNAMIC, service=service, job_name=job_name
        )
    )
    return ds.prefetch(tf.data.AUTOTUNE)


def start_local(workers: int, port: int = 0, dispatcher: str = "", worker_host: str = "localhost"):
    """Start (in this process) a dispatcher on `port` unless `dispatcher` (HOST:PORT) names an existing one,
    and `workers` workers registered with it. Returns (grpc address, servers); keep the servers referenced."""
    svc = tf.data.experimental.service
    servers = []
    if not dispatcher:
        server = svc.DispatchServer(svc.DispatcherConfig(port=port))
        servers.append(server)
        dispatcher = server.target.split("://", 1)[1]
    else:
        check_reachable(f"grpc://{dispatcher}", flag="--dispatcher")
    for _ in range(workers):
        servers.append(
            svc.WorkerServer(svc.WorkerConfig(dispatcher_address=dispatcher, worker_address=f"{worker_host}:%port%"))
        )
    return f"grpc://{dispatcher}", servers
