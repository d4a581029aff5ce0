"""Task runner from config: Prefect's thread pool, or prefect-dask's DaskTaskRunner for scale-out."""

from __future__ import annotations

import math

from prefect.task_runners import ThreadPoolTaskRunner

from mumu.config.runtime import RuntimeConfig


def _this_api_url() -> str:
    """The API this process reports to: PREFECT_API_URL, or the temporary server Prefect started for it."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return str(client.api_url).rstrip("/")


def concurrent_tasks(runtime: RuntimeConfig, per_worker: int | None = None) -> int:
    """Task runs the profile's task runner runs at once: `per_worker` threads per worker (None = the data stages'
    runtime.data_tasks_per_worker), or one per Dask worker process."""
    threads = runtime.data_tasks_per_worker if per_worker is None else per_worker
    return max(1, runtime.workers) * (threads if runtime.task_runner == "thread" else 1)


def shard_groups(shards: list, runtime: RuntimeConfig) -> list[list]:
    """The shards of each task run: `runtime.shards_per_task` each, but as many runs as run at once while there
    are shards for them, dealt round-robin (shard i to run i mod n), so the runs are of even length."""
    if not shards:
        return []
    n = min(len(shards), max(concurrent_tasks(runtime), math.ceil(len(shards) / runtime.shards_per_task)))
    return [shards[i::n] for i in range(n)]


def task_runner(runtime: RuntimeConfig, per_worker: int | None = None):
    """The profile's task runner; `per_worker`: thread-runner task runs per worker, as in `concurrent_tasks`."""
    if runtime.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if runtime.dask_address:  # an existing (multi-node) cluster: `dask scheduler` + `dask worker ...`
            return DaskTaskRunner(address=runtime.dask_address)
        # One process per worker, one thread each: every worker holds its own model replica. The workers
        # report to this process's API: with no server configured that is the temporary one Prefect
        # started here, which each worker would otherwise start again for itself (tens of seconds each).
        return DaskTaskRunner(cluster_kwargs={
            "n_workers": runtime.workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None,
            "env": {"PREFECT_API_URL": _this_api_url()},
        })
    return ThreadPoolTaskRunner(max_workers=concurrent_tasks(runtime, per_worker))


def gather_shard_groups(futures, total: int, already_done: int, desc: str) -> list:
    """Results of task runs that each return a list (one report per shard), as they finish, with a progress
    bar counted in shards."""
    from prefect.futures import as_completed
    from tqdm import tqdm

    reports = []
    with tqdm(total=total, initial=already_done, desc=desc, unit="shard") as bar:
        for future in as_completed(futures):
            done = future.result()
            reports.extend(done)
            bar.update(len(done))
    return reports
