"""Where and how work runs: device, Prefect task runner, seed."""

from __future__ import annotations

from typing import Literal

from mumu.config.base import StrictModel


class RuntimeConfig(StrictModel):
    seed: int = 0
    # "auto" picks cuda when present, else cpu.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Data stages map over shards with this Prefect task runner. "thread" is Prefect's default
    # ThreadPoolTaskRunner; "dask" is prefect-dask's DaskTaskRunner (a local cluster of `workers`
    # processes, one model replica each — or an existing cluster at `dask_address`).
    task_runner: Literal["thread", "dask"] = "thread"
    workers: int = 1
    dask_address: str | None = None
    # Torch intra-op threads per worker (0 = torch's default).
    torch_threads: int = 0
    # Training processes (one per GPU) under `accelerate launch`; 1 = train inside the Prefect task.
    train_processes: int = 1
    task_retries: int = 2
    task_retry_delay_seconds: float = 1.0
