"""Run a child process (e.g. `accelerate launch` for multi-GPU training) and stream its output.

The flow that calls `run_launcher` passes its Prefect run logger's `info` as `on_line`, so every line the
training processes print shows up in the run's logs as it is printed, not when the run ends.

- stdout and stderr are merged into one pipe, so lines keep the order the child wrote them in;
- a non-zero exit raises LaunchError (a RuntimeError: the task/flow retry policy treats it as transient)
  carrying the exit code and the last lines, which is usually where the traceback is;
- if the parent is interrupted or cancelled while waiting (KeyboardInterrupt, Prefect's cancellation or
  termination signal, any exception in `on_line`), the child's whole process group is terminated — the
  workers `accelerate launch` starts included — then killed if it does not stop within `grace_seconds`.
  On Linux the child also gets SIGTERM if the parent dies without a chance to clean up (SIGKILL).
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence

from mumu.errors import UserError

TAIL_LINES = 40


class LaunchError(RuntimeError):
    """The launched command exited non-zero. Retryable: a crashed run resumes from its last checkpoint."""

    def __init__(self, argv: Sequence[str], returncode: int, tail: list[str]):
        self.argv = list(argv)
        self.returncode = returncode
        self.tail = tail
        if returncode < 0:
            try:
                how = f"was killed by {signal.Signals(-returncode).name}"
            except ValueError:
                how = f"was killed by signal {-returncode}"
        else:
            how = f"exited with code {returncode}"
        last = "\n".join(f"  | {line}" for line in tail) or "  (no output)"
        super().__init__(f"{' '.join(self.argv[:6])}{' …' if len(self.argv) > 6 else ''} {how}; last lines:\n{last}")


def accelerate_argv(
    module: str, args: Sequence[str] = (), num_processes: int = 1, launch_args: Sequence[str] = ()
) -> list[str]:
    """`accelerate launch --num_processes N [launch_args] -m module args`, with this interpreter.

    `python -m accelerate.commands.launch` is `accelerate launch` without relying on PATH, so the worker's
    venv is the one used. Multi-node: launch_args=["--num_machines", "2", "--machine_rank", "0",
    "--main_process_ip", HOST, "--main_process_port", PORT] on every node.
    """
    return [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
            *launch_args, "-m", module, *args]


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM when the parent dies (Linux), so no orphaned trainer holds a GPU."""
    try:
        import ctypes  # here: it runs in the forked child, before exec, and only on Linux

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass


def _stop(proc: subprocess.Popen, grace_seconds: float) -> None:
    """SIGTERM the child's process group, SIGKILL it after the grace period."""
    for sig, wait in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_launcher(
    argv: Sequence[str],
    on_line: Callable[[str], None],
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    grace_seconds: float = 10.0,
    tail_lines: int = TAIL_LINES,
) -> None:
    """Run `argv`, call `on_line` with each output line (no newline) as it comes; raise on failure.

    `env` is added to this process's environment (None: inherited as is). PYTHONUNBUFFERED is set so
    Python children print lines when they happen rather than in 8 KiB blocks. All ranks share one pipe:
    a line written in one write (as `logging` does) arrives whole, while `print(a, b)` is one write per
    piece and can be split by another rank's output.
    """
    if not argv:
        raise ValueError("run_launcher: empty argv")
    full_env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
    try:
        proc = subprocess.Popen(
            list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=full_env, cwd=cwd, start_new_session=True,  # own process group: stopped as a whole
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    except (FileNotFoundError, PermissionError) as exc:
        raise UserError(f"cannot start {argv[0]!r}: {exc.strerror}") from exc

    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    try:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            tail.append(line)
            on_line(line)
        returncode = proc.wait()
    except BaseException:
        # Interrupted or cancelled while the child runs: never leave it (and its GPU memory) behind.
        _stop(proc, grace_seconds)
        raise
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
    if returncode != 0:
        raise LaunchError(argv, returncode, list(tail))
