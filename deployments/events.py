"""Events the pipeline emits; prefect.yaml's triggers turn them into runs of the next deployment.

    mumu.data.landed      new input files under a watched folder   → run build-data on that folder
    mumu.stage.completed  a stage flow finished, resource mumu.stage.<stage>, payload {"out": ..., ...}
                          → run the next stage on that output (the stages and each one's upstream: mumu/stage_list.py;
                          cache-features announces the data folder it cached, so pretrain reads it)

A stage only *chains* (label "mumu.chain" = "true") when it ran as a top-level deployment run. A stage
running as a subflow of the pipeline flow, or from the `mumu` CLI, still emits its event (it is visible
in the UI's event feed) but the triggers ignore it: otherwise the pipeline deployment would start every
later stage a second time.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Any

from prefect.context import FlowRunContext
from prefect.events import emit_event
from prefect.events.worker import EventsWorker

from mumu.stage_list import CHAIN_LABEL, DATA_LANDED, INPUTS_RESOURCE, STAGE_COMPLETED, stage


def _is_top_level_deployment_run() -> bool:
    ctx = FlowRunContext.get()
    run = ctx.flow_run if ctx else None
    return bool(run and run.deployment_id and run.parent_task_run_id is None)


def emit_stage_completed(name: str, out: str, **payload: Any):
    """Announce that stage `name` (of mumu/stage_list.py) wrote `out`; extra keyword arguments go into the payload
    (JSON values)."""
    resource = {
        "prefect.resource.id": stage(name).resource_id,  # KeyError for a stage the list lacks
        "prefect.resource.name": name,
        "mumu.stage": name,
        CHAIN_LABEL: "true" if _is_top_level_deployment_run() else "false",
    }
    return emit_event(event=STAGE_COMPLETED, resource=resource, payload={"out": str(out), **payload})


def inputs_resource_id(input_dir: str | Path) -> str:
    """A stable id per watched folder: the hash of its absolute path (names may repeat across hosts)."""
    digest = hashlib.sha256(str(Path(input_dir).resolve()).encode("utf-8")).hexdigest()[:16]
    return f"{INPUTS_RESOURCE}.{digest}"


def flush_events(timeout: float = 30.0) -> None:
    """Block until the events emitted so far have been handed to the server connection.

    `emit_event` only queues the event for a background thread; the watcher records a batch as announced
    only after this returns, so a crash in between re-announces it instead of losing it.
    """
    waiter = threading.Thread(target=EventsWorker.instance().wait_until_empty, daemon=True)
    waiter.start()
    waiter.join(timeout)
    if waiter.is_alive():
        raise TimeoutError(f"events not sent to the Prefect server within {timeout:.0f} s")


def emit_data_landed(input_dir: str | Path, new_files: list[str], out: str | Path | None = None):
    """Announce a batch of new input files under `input_dir` (paths relative to it), and wait until sent.

    `out` (optional) is the run folder the triggered stages should write into (RUN/data, RUN/pretrain, ...).
    """
    input_dir = str(Path(input_dir).resolve())
    resource = {
        "prefect.resource.id": inputs_resource_id(input_dir),
        "prefect.resource.name": Path(input_dir).name,
        "mumu.input": input_dir,
    }
    payload = {"input": input_dir, "new": sorted(new_files), "count": len(new_files)}
    if out is not None:
        payload["out"] = str(out)
    event = emit_event(event=DATA_LANDED, resource=resource, payload=payload)
    if event is not None:  # None: events are off (no API configured), nothing was queued
        flush_events()
    return event
