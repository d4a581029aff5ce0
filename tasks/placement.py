"""Which device a task's models go to in its worker process: the profile's device (mumu/devices.py), with
this Dask worker's number so that on a multi-GPU machine the workers are spread over the GPUs (one model
replica per GPU). With the thread runner every task of the process counts as worker 0: one replica.
"""

from __future__ import annotations

import re
import sys
import zlib

import torch

from mumu.config.runtime import RuntimeConfig
from mumu.devices import runtime_device


def dask_worker_number() -> int | None:
    """This Dask worker's number, None outside Dask: its name (LocalCluster names workers 0, 1, …), the
    name's trailing digits (`dask worker --nworkers N --name host` → host-0, host-1, …), or else a
    checksum of the name (stable across processes, unlike `hash`)."""
    if "distributed" not in sys.modules:  # a Dask worker has imported it; no need to pay its import to learn that
        return None
    try:
        from distributed import get_worker  # optional: only the Dask runner needs it installed

        name = str(get_worker().name)
    except (ImportError, ValueError):
        return None
    digits = re.search(r"(\d+)$", name)
    return int(digits.group(1)) if digits else zlib.crc32(name.encode())


def worker_device(runtime: RuntimeConfig) -> torch.device:
    """The device this worker's models use (and `runtime.torch_threads` applied to this process).

    Not strict: a cuda request on a machine without CUDA fails where a model moves to the device, as a
    task failure Prefect may retry, not as a UserError here."""
    return runtime_device(runtime, worker=dask_worker_number() or 0, strict=False)
