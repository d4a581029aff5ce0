"""Task runner from config: Prefect's thread pool, or prefect-dask's DaskTaskRunner for scale-out."""

from __future__ import annotations

from prefect.task_runners import ThreadPoolTaskRunner

from mumu.config.runtime import RuntimeConfig


def _this_api_url() -> str:
    """The API this process reports to: PREFECT_API_URL, or the temporary server Prefect started for it."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return str(client.api_url).rstrip("/")


def task_runner(runtime: RuntimeConfig):
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
    return ThreadPoolTaskRunner(max_workers=max(1, runtime.workers) * 4)
