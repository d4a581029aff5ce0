"""Each worker process loads a model once and reuses it: the per-process model cache, and a lazy handle that
loads from it only when a stage first calls the model.

With the thread runner all tasks share one replica; with the Dask runner each worker process holds its own,
which is what "one model replica per GPU" means once workers are pinned to devices (tasks/placement.py).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import torch

from mumu.config.runtime import RuntimeConfig
from tasks.placement import worker_device

_lock = threading.Lock()
_cache: dict[tuple[str, str], Any] = {}


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


def lazy_model(kind: str, model_cls: Any, cfg: Any, runtime: RuntimeConfig) -> Lazy:
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
