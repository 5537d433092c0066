"""Run the ``tritonserver`` binary bundled in ``nvidia-pytriton`` on CPU, with readiness polling.

Used by ``agentmesh triton``, ``agentmesh up``, the tests and the benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from agentmesh.inference._repository import copy_if_changed, prepare_model_repository

__all__ = ["LocalTriton", "free_port", "triton_environment"]

# Fast reconnects so a (re)started server is noticed within ~0.2 s instead of gRPC's 1-120 s backoff.
RECONNECT_CHANNEL_ARGS: list[tuple[str, int]] = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _pytriton_dir() -> Path:
    # Located without importing pytriton (its import pulls in much of its own runtime).
    spec = importlib.util.find_spec("pytriton")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("nvidia-pytriton is not installed (pip install 'agentic-mesh[inference]')")
    return Path(spec.origin).resolve().parent / "tritonserver"


def _prepare_backends(home: Path) -> Path:
    """A backend directory with the python backend and the stub for this interpreter's Python version."""
    bundled = _pytriton_dir()
    target = Path(home) / "triton" / "backends"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = bundled / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise FileNotFoundError(f"nvidia-pytriton ships no python backend stub for Python {version}")
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        copy_if_changed(bundled / "backends" / "python" / name, target / "python" / name)
    copy_if_changed(stub, target / "python" / "triton_python_backend_stub")
    return target


def _terminate_with_parent() -> Callable[[], None] | None:
    """A pre-exec hook asking Linux to SIGTERM the server when its parent dies (no orphaned servers)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    prctl, set_death_signal = libc.prctl, 1  # PR_SET_PDEATHSIG

    def hook() -> None:
        prctl(set_death_signal, int(signal.SIGTERM), 0, 0, 0)

    return hook


def triton_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for tritonserver: bundled shared libraries found, the stub running this venv's Python."""
    env = dict(os.environ if base is None else base)
    libdirs = [
        str(sysconfig.get_config_var("LIBDIR")),
        str(_pytriton_dir().parent.parent / "nvidia_pytriton.libs"),
    ]
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*libdirs, *filter(None, [env.get("LD_LIBRARY_PATH", "")])])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


class LocalTriton:
    """A local ``tritonserver`` process on fixed loopback ports; restartable on the same ports.

    ``async with LocalTriton(home=...) as triton: triton.grpc_url`` prepares the model repository (unless
    ``model_repository`` is given), starts the server and returns once it reports ready.
    """

    def __init__(
        self,
        model_repository: Path | None = None,
        *,
        home: Path | None = None,
        host: str = "127.0.0.1",
        grpc_port: int = 0,
        http_port: int = 0,
        metrics_port: int = 0,
        models: Sequence[str] | None = None,
        log_file: Path | None = None,
        startup_timeout: float = 120.0,
        extra_args: Sequence[str] = (),
    ) -> None:
        from agentmesh._settings import Settings

        self.home = Path(home) if home is not None else Settings.from_env().home
        self.model_repository = Path(model_repository) if model_repository is not None else None
        self.host = host
        self.grpc_port = grpc_port or free_port(host)
        self.http_port = http_port or free_port(host)
        self.metrics_port = metrics_port or free_port(host)
        self.models = list(models) if models is not None else None
        self.log_file = log_file
        self.startup_timeout = startup_timeout
        self.extra_args = list(extra_args)
        self._process: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None

    @property
    def grpc_url(self) -> str:
        """``host:port`` of the KServe v2 gRPC endpoint."""
        return f"{self.host}:{self.grpc_port}"

    @property
    def pid(self) -> int | None:
        """Process id of the running server, if any."""
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        """True while the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def command(self) -> list[str]:
        """The tritonserver command line (prepares the backend directory and model repository)."""
        repository = self.model_repository or prepare_model_repository(self.home)
        args = [
            str(_pytriton_dir() / "bin" / "tritonserver"),
            f"--model-repository={repository}",
            f"--backend-directory={_prepare_backends(self.home)}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",
            "--exit-timeout-secs=10",
            "--log-info=false",
        ]
        if self.models is not None:
            args.append("--model-control-mode=explicit")
            args.extend(f"--load-model={name}" for name in self.models)
        return [*args, *self.extra_args]

    async def start(self) -> None:
        """Start the server (no-op if running) and wait until it is ready."""
        if self.is_running():
            return
        command = await asyncio.to_thread(self.command)
        output: IO[bytes] | None = None
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = output = self.log_file.open("ab")
        # A session of its own: the python-backend stubs are its children and are reaped with the group.
        # Spawned from the loop's thread, which lives as long as we do (the death signal follows the thread).
        self._process = subprocess.Popen(  # noqa: ASYNC220 - fork+exec takes milliseconds
            command,
            env=triton_environment(),
            stdout=output,
            stderr=output,
            start_new_session=True,
            preexec_fn=_terminate_with_parent(),
        )
        try:
            await self.wait_ready(within=self.startup_timeout)
        except BaseException:
            await self.stop()
            raise

    async def wait_ready(self, *, within: float) -> None:
        """Poll the server's readiness over gRPC until ready; fail at once if the process exits."""
        import tritonclient.grpc.aio as triton_aio

        client = triton_aio.InferenceServerClient(self.grpc_url, channel_args=RECONNECT_CHANNEL_ARGS)
        deadline = time.monotonic() + within
        try:
            while True:
                if not self.is_running():
                    raise RuntimeError(f"tritonserver exited with {self._exit_code()}{self._log_tail()}")
                with contextlib.suppress(Exception):
                    if await client.is_server_ready(client_timeout=1.0):
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"tritonserver not ready after {within:.0f} s{self._log_tail()}")
                await asyncio.sleep(0.05)  # poll interval, not a readiness guess
        finally:
            await client.close()

    async def stop(self, grace: float = 15.0) -> int | None:
        """SIGTERM (Triton finishes in-flight requests), SIGKILL after ``grace`` seconds; returns the exit code."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, grace)
            except subprocess.TimeoutExpired:
                self._kill_group(process)
                await asyncio.to_thread(process.wait)
        self._kill_group(process)
        self._close_log()
        self._process = None
        return process.returncode

    async def kill(self) -> None:
        """SIGKILL the server and its stubs, as a crash would (tests use it)."""
        process = self._process
        if process is None:
            return
        self._kill_group(process)
        await asyncio.to_thread(process.wait)
        self._close_log()
        self._process = None

    async def restart(self) -> None:
        """Stop (if running) and start again on the same ports."""
        await self.stop()
        await self.start()

    async def __aenter__(self) -> LocalTriton:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @staticmethod
    def _kill_group(process: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)

    def _exit_code(self) -> int | None:
        return self._process.poll() if self._process is not None else None

    def _close_log(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def _log_tail(self, lines: int = 20) -> str:
        if self.log_file is None or not self.log_file.is_file():
            return ""
        tail = self.log_file.read_text(errors="replace").splitlines()[-lines:]
        return "\n" + "\n".join(tail)
