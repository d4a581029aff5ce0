"""The patch of Prefect's private `flow_engine._send_heartbeats` (tasks/prefect_compat.py) holds only for the
Prefect it was written against: the installed release is pyproject.toml's pin, the private function still has
its parameters, importing the flows applies the patch, and any other release makes it raise."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import tomllib
from contextlib import contextmanager
from pathlib import Path

import prefect
import pytest
from prefect import flow_engine

from tasks import prefect_compat

ROOT = Path(__file__).resolve().parents[1]


def _pinned_prefect() -> str:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [m.group(1) for d in deps if (m := re.fullmatch(r"prefect==(\S+)", d.strip()))]
    assert len(pins) == 1, deps
    return pins[0]


def _unpatched():
    function = flow_engine._send_heartbeats
    return getattr(function, "_mumu_original", function)


def test_the_installed_prefect_is_the_pinned_one_the_patch_was_written_against():
    assert prefect.__version__ == _pinned_prefect() == prefect_compat.PREFECT_VERSION


def test_the_private_function_has_the_parameters_the_patch_wraps():
    signature = inspect.signature(_unpatched())
    assert tuple(signature.parameters) == ("engine", "join_on_exit") == prefect_compat.EXPECTED_PARAMETERS
    assert signature.parameters["join_on_exit"].default is True


def test_importing_the_flows_applies_the_patch():
    # A fresh interpreter: this one may have imported the flows already.
    code = ("from prefect import flow_engine\n"
            "before = flow_engine._send_heartbeats\n"
            "assert not hasattr(before, '_mumu_original'), 'patched before the flows were imported'\n"
            "import flows\n"
            "after = flow_engine._send_heartbeats\n"
            "assert after is not before and after._mumu_original is before and after._mumu_subflows_skip_join\n"
            "flows.subflows_skip_heartbeat_join()\n"
            "assert flow_engine._send_heartbeats is after, 'applied twice'\n")
    result = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr


def test_another_prefect_release_makes_the_patch_raise(monkeypatch):
    monkeypatch.setattr(flow_engine, "_send_heartbeats", _unpatched())
    monkeypatch.setattr(prefect, "__version__", "3.9.0")
    pinned = re.escape(f"prefect=={prefect_compat.PREFECT_VERSION}")
    with pytest.raises(prefect_compat.PrefectCompatError, match=rf"prefect 3\.9\.0 is installed.*{pinned}.*re-verify"):
        prefect_compat.subflows_skip_heartbeat_join()
    assert not hasattr(flow_engine._send_heartbeats, "_mumu_original")  # nothing patched


@pytest.mark.parametrize("changed", ["renamed", "no_default", "missing"])
def test_a_changed_private_function_makes_the_patch_raise(monkeypatch, changed):
    @contextmanager
    def renamed(engine, join=True):
        yield

    @contextmanager
    def no_default(engine, join_on_exit):
        yield

    if changed == "missing":
        monkeypatch.delattr(flow_engine, "_send_heartbeats")
    else:
        monkeypatch.setattr(flow_engine, "_send_heartbeats", {"renamed": renamed, "no_default": no_default}[changed])
    with pytest.raises(prefect_compat.PrefectCompatError, match="_send_heartbeats.*re-verify"):
        prefect_compat.subflows_skip_heartbeat_join()


def test_the_patched_function_lets_only_subflows_skip_the_join(monkeypatch):
    calls = []

    @contextmanager
    def recording(engine, join_on_exit=True):
        calls.append(join_on_exit)
        yield

    monkeypatch.setattr(flow_engine, "_send_heartbeats", recording)
    prefect_compat.subflows_skip_heartbeat_join()

    class Run:
        def __init__(self, parent):
            self.parent_task_run_id = parent

    class Engine:
        def __init__(self, run):
            self.flow_run = run

    for engine in (Engine(Run(None)), Engine(Run("a-task-run-id")), Engine(None)):
        with flow_engine._send_heartbeats(engine):
            pass
    with flow_engine._send_heartbeats(Engine(Run("a-task-run-id")), join_on_exit=False):
        pass
    assert calls == [True, False, True, False]  # top level joins, a subflow does not, as async runs never do
