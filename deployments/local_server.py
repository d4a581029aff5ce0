"""Start and stop a throw-away local Prefect server and worker (tests, benchmarks, the UI screenshot).

Everything runs in its own PREFECT_HOME, on 127.0.0.1 and a free port, and only the processes started
here are stopped (a process worker ignores the first SIGTERM and stops on the second: both are sent).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

PREFECT = [sys.executable, "-m", "prefect"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env(home: Path, port: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for the server and for every client of it (CLI, worker, flow runs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
        PREFECT_CLI_PROMPT="false",
        HF_HUB_OFFLINE=os.environ.get("HF_HUB_OFFLINE", "1"),
        TRANSFORMERS_OFFLINE=os.environ.get("TRANSFORMERS_OFFLINE", "1"),
        TOKENIZERS_PARALLELISM="false",
    )
    env.update(extra or {})
    return env


def wait_healthy(api_url: str, proc: subprocess.Popen | None = None, timeout: float = 180.0) -> float:
    """Poll GET /health until it answers 200 → seconds waited. Raises if the server process died."""
    started = time.monotonic()
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {proc.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=5) as resp:
                if resp.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"prefect server at {api_url} not healthy after {timeout:.0f} s")
        time.sleep(0.5)


def stop(proc: subprocess.Popen | None, timeout: float = 20.0) -> None:
    """Stop one process we started: SIGTERM, again if it ignored the first (workers do), then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGKILL):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout / 2 if sig == signal.SIGTERM else 10)
            return
        except subprocess.TimeoutExpired:
            continue


def prefect_cli(args: list[str], env: dict[str, str], cwd: str | Path | None = None, timeout: float = 180,
                check: bool = True) -> subprocess.CompletedProcess:
    """Run `prefect ARGS` against the server in `env`; on failure raise with its output."""
    done = subprocess.run([*PREFECT, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done


@contextmanager
def local_server(home: str | Path, port: int | None = None, log_path: str | Path | None = None,
                 extra_env: dict[str, str] | None = None) -> Iterator[dict[str, str]]:
    """`prefect server start` in `home` → yields the client environment; stops the server on exit."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = server_env(home, port, extra_env)
    log = open(log_path or home / "server.log", "wb")
    proc = subprocess.Popen([*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_healthy(env["PREFECT_API_URL"], proc)
        yield env
    finally:
        stop(proc)
        log.close()


@contextmanager
def worker(pool: str, env: dict[str, str], cwd: str | Path | None = None, queues: list[str] = (),
           log_path: str | Path | None = None, extra_args: list[str] = (),
           new_session: bool = False) -> Iterator[subprocess.Popen]:
    """`prefect worker start --pool POOL [--work-queue Q ...]`, stopped (two SIGTERMs) on exit.

    new_session: the worker leads its own process group, which its flow-run processes join, so
    `os.killpg(proc.pid, SIGKILL)` takes down the worker with everything it runs (a lost machine)."""
    args = [*PREFECT, "worker", "start", "--pool", pool, *extra_args]
    for q in queues:
        args += ["--work-queue", q]
    log = open(log_path or Path(env["PREFECT_HOME"]) / f"worker-{pool}.log", "wb")
    proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=new_session)
    try:
        yield proc
    finally:
        stop(proc, timeout=30)
        log.close()
