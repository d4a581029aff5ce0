"""Which torch device a process computes on, from a profile's `runtime`: the one place that decides it.

Processes that build models ask here: the data, feature and evaluation tasks in their workers (tasks/placement.py,
with the Dask worker's number), `mumu generate` (mumu/cli.py) and the training stages' accelerator
(mumu/train/build.py). So "auto", a cuda request on a machine without CUDA and the spreading of workers over the
GPUs of one machine mean the same wherever they are read.
"""

from __future__ import annotations

import torch

from mumu.config.runtime import RuntimeConfig
from mumu.errors import UserError


def runtime_device(runtime: RuntimeConfig, worker: int | None = None, *, strict: bool = True) -> torch.device:
    """The device `runtime.device` names on this machine ("auto": cuda when present, else cpu).

    worker: this process's number among the worker processes of its machine. On a machine with more than one
    GPU, worker n takes GPU n % (number of GPUs): one model replica per GPU. None: a process that is not one of
    a set of workers, which gets plain "cuda" (torch's current GPU).
    strict: a cuda request on a machine without CUDA is a UserError here, not a CPU fallback; False returns the
    cuda device anyway (whatever moves a model to it fails there).
    Also applies `runtime.torch_threads` (when set) to this process: its callers are about to run models."""
    if runtime.torch_threads:
        torch.set_num_threads(runtime.torch_threads)
    name = runtime.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type != "cuda":
        return device
    if strict and not torch.cuda.is_available():
        raise UserError(f"runtime.device is {runtime.device!r} but CUDA is not available on this machine "
                        "(--set runtime.device=cpu or auto)")
    if worker is not None and torch.cuda.device_count() > 1:
        device = torch.device("cuda", worker % torch.cuda.device_count())
    return device
