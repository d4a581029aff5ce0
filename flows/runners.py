"""Task runner from config: Prefect's thread pool, or prefect-dask's DaskTaskRunner for scale-out."""

from __future__ import annotations

from prefect.task_runners import ThreadPoolTaskRunner

from mumu.config.runtime import RuntimeConfig


def task_runner(runtime: RuntimeConfig):
    if runtime.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if runtime.dask_address:  # an existing (multi-node) cluster: `dask scheduler` + `dask worker ...`
            return DaskTaskRunner(address=runtime.dask_address)
        # One process per worker, one thread each: every worker holds its own model replica.
        return DaskTaskRunner(
            cluster_kwargs={"n_workers": runtime.workers, "threads_per_worker": 1, "processes": True}
        )
    return ThreadPoolTaskRunner(max_workers=max(1, runtime.workers) * 4)
