"""run_launcher: streams a child's lines in order, raises LaunchError with the tail, never leaves a child behind."""

import os
import signal
import socket
import sys
import textwrap
import time

import pytest

from mumu.errors import UserError
from mumu.launch import LaunchError, accelerate_argv, run_launcher


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0): count it as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_lines_from_stdout_and_stderr_arrive_in_order_as_they_are_printed():
    got, stamps = [], []

    def on_line(line):
        got.append(line)
        stamps.append(time.monotonic())

    run_launcher(_py("""
        import sys, time
        print("one")
        print("two", file=sys.stderr)
        print("thr\\u00e9e")
        time.sleep(0.8)
        sys.stderr.write("four\\n")
    """), on_line)
    assert got == ["one", "two", "thrée", "four"]
    # streamed, not collected at exit: the line before the sleep arrived well before the last one
    assert stamps[3] - stamps[2] > 0.5


def test_env_is_added_to_the_inherited_environment(tmp_path):
    got = []
    run_launcher(_py("import os; print(os.environ['MUMU_X'], os.environ['PATH'] != '', os.getcwd())"),
                 got.append, env={"MUMU_X": "42"}, cwd=tmp_path)
    assert got == [f"42 True {tmp_path}"]


def test_non_zero_exit_raises_with_the_exit_code_and_the_last_lines():
    got = []
    with pytest.raises(LaunchError) as info:
        run_launcher(_py("""
            import sys
            for i in range(100):
                print(f"step {i}")
            sys.exit("boom: out of memory")
        """), got.append, tail_lines=5)
    err = info.value
    assert isinstance(err, RuntimeError)  # retryable by the tasks' retry policy (not a UserError)
    assert err.returncode == 1
    assert err.tail == ["step 96", "step 97", "step 98", "step 99", "boom: out of memory"]
    assert len(got) == 101
    assert "exited with code 1" in str(err) and "| boom: out of memory" in str(err)


def test_killed_child_is_reported_by_signal():
    with pytest.raises(LaunchError, match="killed by SIGKILL") as info:
        run_launcher(_py("import os, signal; print('bye', flush=True); os.kill(os.getpid(), signal.SIGKILL)"),
                     lambda line: None)
    assert info.value.returncode == -signal.SIGKILL and info.value.tail == ["bye"]


def test_missing_program_is_a_user_error():
    with pytest.raises(UserError, match="cannot start 'no-such-launcher-xyz'"):
        run_launcher(["no-such-launcher-xyz", "--num_processes", "2"], print)


# A child that starts a grandchild (like `accelerate launch` starts its workers), reports both pids,
# then goes silent: the parent sits blocked reading its pipe when the interrupt comes.
_FAMILY = """
    import subprocess, sys, time
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    print("pids", __import__("os").getpid(), grandchild.pid, flush=True)
    time.sleep(120)
"""


def _pids(line):
    _, child, grandchild = line.split()
    return int(child), int(grandchild)


def test_keyboard_interrupt_while_blocked_stops_the_child_and_its_workers():
    pids = []

    def on_alarm(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, on_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, 2.0)
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            run_launcher(_py(_FAMILY), lambda line: pids.append(_pids(line)), grace_seconds=5)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - started < 8  # SIGTERM was enough, no waiting out the 120 s sleep
    (child, grandchild), = pids
    assert _wait_gone(child) and _wait_gone(grandchild)


def test_cancellation_raised_in_the_callback_stops_the_child():
    class Cancelled(BaseException):  # what a cancelled run raises: not an Exception subclass
        pass

    pids = []

    def on_line(line):
        pids.append(_pids(line))
        raise Cancelled

    with pytest.raises(Cancelled):
        run_launcher(_py(_FAMILY), on_line, grace_seconds=5)
    (child, grandchild), = pids
    assert _wait_gone(child) and _wait_gone(grandchild)


def test_child_ignoring_sigterm_is_killed_after_the_grace_period():
    pids = []

    def on_line(line):
        pids.append(int(line))
        raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_launcher(_py("""
            import os, signal, time
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            print(os.getpid(), flush=True)
            time.sleep(120)
        """), on_line, grace_seconds=1)
    assert 0.9 < time.monotonic() - started < 8
    assert _wait_gone(pids[0])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accelerate_launch_runs_two_worker_processes_and_streams_both(tmp_path):
    # One write per line: both ranks share the launcher's pipe, unbuffered, and print('rank', r, ...) is four
    # writes that the other rank's line can land between ("rank 0 rankof 2" was seen in CI).
    (tmp_path / "rank_report.py").write_text(
        "import os, sys\nsys.stdout.write(f\"rank {os.environ['RANK']} of {os.environ['WORLD_SIZE']}\\n\")\n"
    )
    argv = accelerate_argv(
        "rank_report", num_processes=2,
        launch_args=["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                     "--main_process_port", str(_free_port())],
    )
    assert argv[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    got = []
    run_launcher(argv, got.append, env={"PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"})
    assert sorted(line for line in got if line.startswith("rank ")) == ["rank 0 of 2", "rank 1 of 2"]
