"""A workaround for Prefect's per-subflow cost, written against one Prefect version and refusing any other.

`subflows_skip_heartbeat_join()` replaces Prefect's private `prefect.flow_engine._send_heartbeats`. It is
applied where the stage flows are defined (flows/__init__.py): each stage runs as a subflow of `mumu pipeline`
and of the benches' timing flows. A private function can change in any release, so the patch checks the
installed Prefect against PREFECT_VERSION (pyproject.toml's pin) and the function's signature, and raises
PrefectCompatError naming what to re-verify rather than patching something it was not written for.
tests/test_prefect_compat.py checks the pin, the signature, and that importing the flows applies the patch.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

import prefect
from prefect import flow_engine

# The Prefect release the patch was checked against: pyproject.toml pins exactly this one.
PREFECT_VERSION = "3.8.8"
# The parameters of `_send_heartbeats(engine, join_on_exit=True)` in that release.
EXPECTED_PARAMETERS = ("engine", "join_on_exit")

_RECHECK = ("re-verify in that release's prefect/flow_engine.py that `_send_heartbeats(engine, join_on_exit=True)` is "
            "still the context manager the sync flow engine enters once per flow run, that `join_on_exit=False` still "
            "only skips joining the heartbeat thread (which stops by itself on its stop flag), and that a subflow's "
            "engine still has `flow_run.parent_task_run_id` set; then set PREFECT_VERSION in tasks/prefect_compat.py "
            "to pyproject.toml's prefect pin")


class PrefectCompatError(RuntimeError):
    """The installed Prefect is not the one a patch of its private API was written against."""


def check_prefect() -> Any:
    """Prefect's `_send_heartbeats` as found, if Prefect is the pinned release and the function has the expected
    parameters; else PrefectCompatError. A function this module already patched is returned as it is."""
    if prefect.__version__ != PREFECT_VERSION:
        raise PrefectCompatError(
            f"prefect {prefect.__version__} is installed, but the patch of its private "
            f"prefect.flow_engine._send_heartbeats was written against prefect=={PREFECT_VERSION}: {_RECHECK}")
    function = getattr(flow_engine, "_send_heartbeats", None)
    if function is None:
        raise PrefectCompatError(f"prefect {prefect.__version__} has no prefect.flow_engine._send_heartbeats: "
                                 f"{_RECHECK}")
    signature = inspect.signature(getattr(function, "_mumu_original", function))
    parameters = tuple(signature.parameters)
    if parameters != EXPECTED_PARAMETERS or signature.parameters["join_on_exit"].default is not True:
        raise PrefectCompatError(
            f"prefect.flow_engine._send_heartbeats{signature} is not `_send_heartbeats(engine, join_on_exit=True)` as "
            f"in prefect=={PREFECT_VERSION}: {_RECHECK}")
    return function


def subflows_skip_heartbeat_join() -> None:
    """Stop every subflow's end from waiting up to 1 s for its heartbeat thread (Prefect 3.8). Idempotent.

    Each flow run starts a heartbeat thread that sleeps in 1 s steps, and the end of every sync flow run
    joins it, so each run returns 0-1 s late only for that thread to notice its stop flag: 0.5 s on
    average for each stage of `mumu pipeline` (each a subflow), ~4 s of a 17 s run when the tiny pipeline
    had 8 flow runs. Heartbeats stay exactly as they are (same thread, same events, stop flag set at the same point);
    a subflow's end just no longer waits for the daemon thread, which exits by itself within 1 s, as
    Prefect's own async engine already does (join_on_exit=False). Top-level runs still join, so a
    process that exits right after its flow never cuts the thread short.
    Raises PrefectCompatError unless Prefect is the release this was written against (check_prefect).
    """
    original = check_prefect()
    if getattr(original, "_mumu_subflows_skip_join", False):
        return

    @contextlib.contextmanager
    def send_heartbeats(engine: Any, join_on_exit: bool = True):
        run = getattr(engine, "flow_run", None)
        subflow = run is not None and run.parent_task_run_id is not None
        with original(engine, join_on_exit=join_on_exit and not subflow):
            yield

    send_heartbeats._mumu_subflows_skip_join = True  # type: ignore[attr-defined]
    send_heartbeats._mumu_original = original  # type: ignore[attr-defined]
    flow_engine._send_heartbeats = send_heartbeats
