"""Test-wide settings: offline hub, quiet Prefect, small thread pools (CI has 2 cores)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A training step of the tiny profile runs on 2 torch threads (runtime.train_torch_threads); beside a second test
# worker on CI's 2 cores, libgomp's default spin-wait makes those threads burn the core the other worker needs (a
# 2-thread loop beside a busy core: 4-5x slower). A short spin lets them sleep instead, in this process and in every
# process the tests start (servers, workers, flow runs inherit it); alone, the loop's speed is unchanged.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")

import pytest  # noqa: E402
import torch  # noqa: E402

# One intra-op thread: the test models are tiny, so extra threads only add sync cost, and on a shared
# 2-core machine two spinning OpenMP threads per process made a forward 10-20x slower.
torch.set_num_threads(1)

from tests.prefect_harness import prefect_server  # noqa: E402,F401  (session fixture)
from tests.trained_models import SPECS, toy_models  # noqa: E402,F401  (session fixture)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook, which reads the groups into the node ids
def pytest_collection_modifyitems(config, items):
    """Work units for pytest-xdist (`make test`: `--dist loadgroup --no-loadscope-reorder`), each run whole by one
    worker. The tests marked `learning(model=NAME)` are the unit NAME, so one worker trains the shared model NAME once
    (tests/trained_models.py) and runs all its readers; every other test module is a unit, so its module-scoped
    fixtures (small trainings, servers) are built once, not once per worker.

    Longest first: the models in order of their training steps, then the modules with `slow` tests, then the rest, so
    the run ends on short units that keep both workers busy to the end (xdist hands out units in this order). Starting
    the longest training beside the slow modules instead, so that the two longest trainings do not share the cores,
    was slower (14 min 57 s against 13 min 36 s): servers and subprocesses keep a core as busy as a training does."""
    slow_modules = {_module(item) for item in items if item.get_closest_marker("slow")}

    def order(item) -> tuple:
        model = _model_of(item)
        if model:
            return 0, -SPECS[model].steps, model
        return (1,) if _module(item) in slow_modules else (2,)

    for item in items:
        item.add_marker(pytest.mark.xdist_group(_model_of(item) or _module(item)))
    items.sort(key=order)  # stable: within a unit or a kind, collection order


def _module(item) -> str:
    return item.nodeid.split("::")[0]


def _model_of(item) -> str | None:
    marker = item.get_closest_marker("learning")
    model = marker.kwargs.get("model") if marker else None
    if model is not None and model not in SPECS:
        raise pytest.UsageError(f"{item.nodeid}: learning(model={model!r}) is not one of {', '.join(SPECS)}")
    return model
