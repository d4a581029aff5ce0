"""Task runner from config: Prefect's thread pool, or prefect-dask's DaskTaskRunner for scale-out."""

from __future__ import annotations

import math
import queue
import time
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.task_runners import ThreadPoolTaskRunner
from tqdm import tqdm

from mumu.config.runtime import RuntimeConfig


def _this_api_url() -> str:
    """The API this process reports to: PREFECT_API_URL, or the temporary server Prefect started for it."""
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
        from prefect_dask import DaskTaskRunner  # optional: dask and distributed only for this runner

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


def gather_shard_groups(futures, total: int, already_done: int, desc: str, report_paths: list[Path] = ()) -> list:
    """Results of task runs that each return a list (one report per shard), as they finish, with a progress
    bar counted in shards. With `report_paths` (the file each shard of these runs writes last), the bar moves
    as each shard's report appears, not only as a whole run of runtime.shards_per_task shards ends."""
    # One done-callback per run, registered once (prefect.futures.wait with a timeout would add another to every
    # pending future at each poll).
    finished: queue.SimpleQueue = queue.SimpleQueue()
    for future in futures:
        future.add_done_callback(finished.put)
    reports, watch = [], _NewFiles(report_paths)

    def next_finished():
        try:
            return finished.get(timeout=watch.interval)
        except queue.Empty:
            return None

    with tqdm(total=total, initial=already_done, desc=desc, unit="shard") as bar:
        for _ in range(len(futures)):
            while (future := next_finished()) is None:
                bar.update(already_done + max(len(reports), watch.count()) - bar.n)
            reports.extend(future.result())
            bar.update(already_done + max(len(reports), watch.count()) - bar.n)
    return reports


class _NewFiles:
    """How many of `paths` were written since this was made: each one's modification time, compared with its own
    at the start (not with a clock, so a file server's coarse or skewed times do not matter). Each count stats
    only the paths not seen yet, and the time between counts grows with what a count costs."""

    def __init__(self, paths: list[Path]):
        self.before = {path: _mtime(path) for path in paths}
        self.unseen, self.seen, self.interval = list(paths), 0, 0.5

    def count(self) -> int:
        begin = time.perf_counter()
        still = [path for path in self.unseen if _mtime(path) in (None, self.before[path])]
        self.seen += len(self.unseen) - len(still)
        self.unseen = still
        self.interval = max(0.5, 20 * (time.perf_counter() - begin))
        return self.seen


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None
