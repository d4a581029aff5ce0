"""Where a data task run's background shard I/O runs (mumu/data/stages.py run_shards): a thread, or a process.

A thread's Python (tar headers, Pillow's plugin code, crops) holds the GIL that the models' thread waits for after
each of its small ops; a process of its own does not, for the cost of pickling each shard's images to it and back
(a few ms a shard). The process is forked once per process and kept for later task runs.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool


@contextlib.contextmanager
def background(shard_io: str):
    """`submit(fn, *args) -> Future` of the run's background worker; on leaving, all it was given has finished."""
    if shard_io == "process" and not multiprocessing.current_process().daemon:
        pool, submitted = None, []

        def submit(fn, *args):
            nonlocal pool
            pool = pool or _process_pool()  # on first use: a run that submits nothing starts no process
            submitted.append(pool.submit(fn, *args))
            return submitted[-1]

        try:
            yield submit
        finally:
            wait(submitted)
    else:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-io") as pool:
            yield pool.submit


_pool_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None


def _process_pool() -> ProcessPoolExecutor:
    """This process's shard-I/O process, started once and kept for later task runs; one whose process died (e.g.
    killed for memory) is replaced.

    Forked, as PyTorch's DataLoader starts its workers on Linux: it runs only Pillow, numpy and tarfile code (no
    torch op, no device, no logging), so the parent's other threads and their locks, which a fork leaves behind,
    are never needed in it. A spawned one re-ran the parent's main module and imported torch (via webdataset)
    again: 3-4 s before its first shard, which every run of a few shards waited for (build-data on the 24
    bundled samples: 7 s of shards against 3 s with a thread), and a RuntimeError for a script without a
    `__main__` guard."""
    global _pool
    with _pool_lock:
        if _pool is not None:
            try:
                _pool.submit(int).result()
            except BrokenProcessPool:
                _pool = None
        if _pool is None:
            _pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"))
        return _pool
