"""``agentmesh triton``: run the tritonserver bundled in nvidia-pytriton on CPU over the shipped models.

Prepares the model repository (one-time MiniLM ONNX export cached under AGENTMESH_HOME/models), the python
backend directory and the library path, waits until the server is ready, and stops it cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``triton`` flags."""
    parser.add_argument(
        "--port", type=int, default=None, help="KServe v2 gRPC port (default: AGENTMESH_TRITON_PORT, 8001)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--http-port", type=int, default=0, help="HTTP port (default: a free port)")
    parser.add_argument(
        "--metrics-port", type=int, default=0, help="Triton /metrics port (default: a free port)"
    )
    parser.add_argument(
        "--model-repository",
        type=Path,
        default=None,
        help="serve this prepared repository as is (default: the shipped models prepared under AGENTMESH_HOME/triton)",
    )
    parser.add_argument(
        "--model", action="append", dest="models", default=None, help="load only this model (repeatable)"
    )
    parser.add_argument(
        "--prepare-only",
        action="store_true",
        help="only build the self-contained repository (e.g. to ship to a GPU Triton) and print its path",
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; returns tritonserver's exit status."""
    import asyncio
    import logging
    import signal

    from agentmesh._settings import Settings
    from agentmesh.inference import LocalTriton, prepare_model_repository

    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    log = logging.getLogger("agentmesh.triton")
    if args.prepare_only:
        print(prepare_model_repository(settings.home).resolve())
        return 0

    async def serve() -> int:
        triton = LocalTriton(
            args.model_repository,
            home=settings.home,
            host=args.host,
            grpc_port=args.port or settings.triton_port,
            http_port=args.http_port,
            metrics_port=args.metrics_port,
            models=args.models,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await triton.start()
        except (RuntimeError, TimeoutError) as error:  # its own output above says why
            log.error("triton did not start: %s", error)
            return 1
        log.info(
            "triton ready: grpc %s, http %s:%d, metrics http://%s:%d/metrics (pid %s)",
            triton.grpc_url,
            triton.host,
            triton.http_port,
            triton.host,
            triton.metrics_port,
            triton.pid,
        )
        # Wake on a signal, or notice if the server dies on its own.
        while not stop.is_set() and triton.is_running():
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except TimeoutError:
                pass
        died = not triton.is_running()
        code = await triton.stop()
        log.info("triton stopped (exit %s)", code)
        return 1 if died else 0

    return asyncio.run(serve())
