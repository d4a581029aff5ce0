"""Test-wide settings: offline hub, quiet Prefect, small thread pools (CI has 2 cores)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# One intra-op thread: the test models are tiny, so extra threads only add sync cost, and on a shared
# 2-core machine two spinning OpenMP threads per process made a forward 10-20x slower.
torch.set_num_threads(1)

from tests.prefect_harness import prefect_server  # noqa: E402,F401  (session fixture)
from tests.trained_models import toy_models  # noqa: E402,F401  (session fixture)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook, which reads the groups into the node ids
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test` runs `-n 2 --dist loadgroup`) the learning tests form one group, so one worker
    trains each shared model once (tests/trained_models.py); the rest of the suite goes, test by test, to whichever
    worker is free. Tests marked `learning(group=NAME)` read a model no other group reads and form a group of their
    own, which either worker can take (the `unseen` model's training alone is a third of the learning group's)."""
    for item in items:
        marker = item.get_closest_marker("learning")
        if marker:
            item.add_marker(pytest.mark.xdist_group(marker.kwargs.get("group", "learning")))
