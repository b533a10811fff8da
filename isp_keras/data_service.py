"""Run a tf.data service: `python -m isp_keras.data_service --port=5050 --workers=2` (dispatcher + workers),
then train with `--data_service=grpc://HOST:PORT`."""

from __future__ import annotations

from isp_keras import cli
from isp_keras.data.config import ServiceConfig


def run(cfg: ServiceConfig) -> None:
    import socket

    import tensorflow as tf

    from isp_keras.data import service
    from isp_keras.errors import UserError

    try:
        address, servers = service.start_local(cfg.workers, cfg.port, cfg.dispatcher, cfg.worker_host)
    except tf.errors.OpError as exc:
        raise UserError(
            f"--port={cfg.port}: could not start the tf.data service ({exc.message.splitlines()[0][:200]})"
        ) from None
    print(
        f"tf.data service at {address} with {cfg.workers} local worker(s); train with "
        f"--data_service={address.replace('localhost', socket.gethostname())}. Ctrl-C stops it.",
        flush=True,
    )
    servers[0].join()  # serves until the process is stopped


if __name__ == "__main__":
    cli.main(ServiceConfig, run)
