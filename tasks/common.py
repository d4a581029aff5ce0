"""What every task module shares: task options, the retry rule, the per-process model cache, and one
workaround for Prefect's per-subflow cost (`_subflows_skip_heartbeat_join`, applied on import: every flow
module imports this one).

Each worker process loads a model once and reuses it. With the thread runner all tasks share one
replica; with the Dask runner each worker process holds its own, which is what "one model replica per
GPU" means once workers are pinned to devices.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import re
import threading
import zlib
from typing import Any, Callable

import torch

from prefect.cache_policies import NO_CACHE

from mumu.config.runtime import RuntimeConfig
from mumu.errors import UserError
from models.hf import resolve_device


def retry_unless_user_error(task, task_run, state) -> bool:
    """Retry transient failures, not the user's mistakes: those fail the same way every time."""
    return not isinstance(state.result(raise_on_failure=False), UserError)


# Task inputs hold decoded images and models' outputs: never hash them for Prefect's cache, never
# persist them as results. Retries are on by default; flows raise them to the profile's count.
TASK_OPTIONS: dict[str, Any] = dict(cache_policy=NO_CACHE, persist_result=False, retries=2, retry_delay_seconds=1,
                                    retry_condition_fn=retry_unless_user_error)

_lock = threading.Lock()
_cache: dict[tuple[str, str], Any] = {}


def _dask_worker_number() -> int | None:
    """This Dask worker's number, None outside Dask: its name (LocalCluster names workers 0, 1, …), the
    name's trailing digits (`dask worker --nworkers N --name host` → host-0, host-1, …), or else a
    checksum of the name (stable across processes, unlike `hash`)."""
    try:
        from distributed import get_worker

        name = str(get_worker().name)
    except (ImportError, ValueError):
        return None
    digits = re.search(r"(\d+)$", name)
    return int(digits.group(1)) if digits else zlib.crc32(name.encode())


def worker_device(runtime: RuntimeConfig) -> torch.device:
    """The device this worker uses: on a multi-GPU machine, Dask workers are spread over the GPUs by
    their number (one model replica per GPU). Also applies `runtime.torch_threads` to this process."""
    if runtime.torch_threads:
        torch.set_num_threads(runtime.torch_threads)
    device = resolve_device(runtime)
    if device.type == "cuda" and torch.cuda.device_count() > 1:
        number = _dask_worker_number()
        device = torch.device("cuda", (number or 0) % torch.cuda.device_count())
    return device


def cached_model(kind: str, cfg: Any, device: torch.device, build: Callable[[], Any], latest_only: bool = False) -> Any:
    """Load `build()` once per (kind, config, device) in this process; threads wait for the first load.

    `cfg` identifies the model: a config section (pydantic) or any string (e.g. a checkpoint path).
    latest_only: loading a new model of this kind drops the others of its kind from the cache (a long-lived
    worker evaluating one checkpoint after another would otherwise keep every one of them in memory)."""
    ident = cfg.model_dump_json() if hasattr(cfg, "model_dump_json") else str(cfg)
    key = (kind, f"{ident}@{device}")
    with _lock:
        if key not in _cache:
            if latest_only:
                for old in [k for k in _cache if k[0] == kind]:
                    del _cache[old]
            _cache[key] = build()
        return _cache[key]


def retry_options(runtime: RuntimeConfig) -> dict[str, Any]:
    """`task.with_options(**retry_options(runtime))`: the profile's retry count and delay."""
    return dict(retries=runtime.task_retries, retry_delay_seconds=runtime.task_retry_delay_seconds)


def lazy_model(kind: str, model_cls: Any, cfg: Any, runtime: RuntimeConfig) -> "Lazy":
    """`model_cls.from_config(cfg, device)` from this process's cache, loaded on first use."""
    device = worker_device(runtime)
    return Lazy(lambda: cached_model(kind, cfg, device, lambda: model_cls.from_config(cfg, device)))


class Lazy:
    """Defers loading a model until a stage actually calls it (e.g. no captioner when all captions exist)."""

    def __init__(self, load: Callable[[], Any]):
        self._load = load

    @functools.cached_property
    def _model(self) -> Any:
        return self._load()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def _subflows_skip_heartbeat_join() -> None:
    """Stop every subflow's end from waiting up to 1 s for its heartbeat thread (Prefect 3.8).

    Each flow run starts a heartbeat thread that sleeps in 1 s steps, and the end of every sync flow run
    joins it, so each run returns 0-1 s late only for that thread to notice its stop flag: 0.5 s on
    average for each stage of `mumu pipeline` (each a subflow), ~4 s of a 17 s run when the tiny pipeline
    had 8 flow runs. Heartbeats stay exactly as they are (same thread, same events, stop flag set at the same point);
    a subflow's end just no longer waits for the daemon thread, which exits by itself within 1 s, as
    Prefect's own async engine already does (join_on_exit=False). Top-level runs still join, so a
    process that exits right after its flow never cuts the thread short. Applied only where Prefect's
    `_send_heartbeats(engine, join_on_exit=...)` is what this was written against.
    """
    try:
        from prefect import flow_engine

        original = flow_engine._send_heartbeats
        if getattr(original, "_mumu_subflows_skip_join", False):
            return
        if list(inspect.signature(original).parameters) != ["engine", "join_on_exit"]:
            return
    except (ImportError, AttributeError, TypeError, ValueError):
        return

    @contextlib.contextmanager
    def send_heartbeats(engine: Any, join_on_exit: bool = True):
        run = getattr(engine, "flow_run", None)
        subflow = run is not None and run.parent_task_run_id is not None
        with original(engine, join_on_exit=join_on_exit and not subflow):
            yield

    send_heartbeats._mumu_subflows_skip_join = True  # type: ignore[attr-defined]
    flow_engine._send_heartbeats = send_heartbeats


_subflows_skip_heartbeat_join()
