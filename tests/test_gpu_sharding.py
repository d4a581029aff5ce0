"""One model replica per GPU: which device a data-stage worker takes on a multi-GPU machine.

No GPU here, so torch's CUDA queries and Dask's worker name are stood in for; what is tested is the
choice, and that each worker's models are built on (and cached for) its own device.
"""

import pytest
import torch

from mumu.config import load_profile
from tasks import model_cache
from tasks.placement import worker_device


class _Worker:
    def __init__(self, name):
        self.name = name


@pytest.fixture
def gpus(monkeypatch):
    """A machine with `n` GPUs, and a Dask worker called `name` (None: not in a Dask worker)."""
    import distributed

    def machine(n: int, name):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

        def get_worker():
            if name is None:
                raise ValueError("No worker found")  # what distributed raises outside a worker
            return _Worker(name)

        monkeypatch.setattr(distributed, "get_worker", get_worker)

    return machine


RUNTIME = load_profile("tiny", {"runtime.device": "auto", "runtime.torch_threads": 0}).runtime


@pytest.mark.parametrize("name, expected", [
    (0, 0), (1, 1), (2, 2), (3, 3), (4, 0), (5, 1),          # LocalCluster workers are named 0, 1, 2, ...
    ("node7-0", 0), ("node7-3", 3), ("node7-6", 2),          # `dask worker --nworkers N --name node7`
])
def test_dask_workers_are_spread_over_the_gpus_by_their_number(gpus, name, expected):
    gpus(4, name)
    assert worker_device(RUNTIME) == torch.device("cuda", expected)


def test_a_worker_name_without_a_number_still_gets_a_stable_gpu(gpus):
    gpus(4, "tcp://10.0.0.7:40123")
    first = worker_device(RUNTIME)
    assert first.type == "cuda" and 0 <= first.index < 4
    assert all(worker_device(RUNTIME) == first for _ in range(3))  # the same every time (no hash seed)


def test_one_gpu_no_gpu_and_outside_dask(gpus):
    gpus(1, 3)
    assert worker_device(RUNTIME) == torch.device("cuda")  # nothing to spread
    gpus(0, 3)
    assert worker_device(RUNTIME) == torch.device("cpu")
    gpus(2, None)  # thread runner: one replica, the first GPU
    assert worker_device(RUNTIME) == torch.device("cuda", 0)


def test_each_device_gets_its_own_cached_replica():
    built = []

    def build(device):
        built.append(device)
        return object()

    a0 = model_cache.cached_model("probe", "cfg-x", torch.device("cuda", 0), lambda: build("cuda:0"))
    a1 = model_cache.cached_model("probe", "cfg-x", torch.device("cuda", 1), lambda: build("cuda:1"))
    again = model_cache.cached_model("probe", "cfg-x", torch.device("cuda", 0), lambda: build("cuda:0"))
    assert a0 is again and a0 is not a1 and built == ["cuda:0", "cuda:1"]


def test_latest_only_keeps_one_model_of_its_kind_and_leaves_other_kinds():
    built = []

    def build(name):
        built.append(name)
        return object()

    cpu = torch.device("cpu")
    other = model_cache.cached_model("probe-encoder", "enc", cpu, lambda: build("enc"))
    first = model_cache.cached_model("probe-sampler", "ckpt-1", cpu, lambda: build("ckpt-1"), latest_only=True)
    assert model_cache.cached_model("probe-sampler", "ckpt-1", cpu, lambda: build("x"), latest_only=True) is first
    second = model_cache.cached_model("probe-sampler", "ckpt-2", cpu, lambda: build("ckpt-2"), latest_only=True)
    assert second is not first and built == ["enc", "ckpt-1", "ckpt-2"]
    assert [k for k in model_cache._cache if k[0] == "probe-sampler"] == [("probe-sampler", "ckpt-2@cpu")]
    assert model_cache.cached_model("probe-encoder", "enc", cpu, lambda: build("y")) is other
    # the first checkpoint again is loaded again (it was dropped), and drops the second
    model_cache.cached_model("probe-sampler", "ckpt-1", cpu, lambda: build("ckpt-1"), latest_only=True)
    assert built == ["enc", "ckpt-1", "ckpt-2", "ckpt-1"]
