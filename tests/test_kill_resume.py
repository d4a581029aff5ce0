"""A training process killed (SIGKILL) mid-stage and started again finishes as if never interrupted.

The processes report to the session's test server (PREFECT_API_URL), as they would to a deployment's: starting a
temporary server of their own cost each of them half its time.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from prefect.settings import get_current_settings

from mumu.config import load_profile
from mumu.data.shards import shard_urls
from mumu.train import loop
from tests.test_flow_train import shards  # noqa: F401  (module fixture: tiny ground-truth shards)

STEPS = 6
OVERRIDES = {"train.pretrain.checkpoint_every": 2, "train.pretrain.sample_every": 0}
ARGS = ["--max-steps", str(STEPS), *[a for k, v in OVERRIDES.items() for a in ("--set", f"{k}={v}")]]


def _pretrain(data, out) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mumu.cli", "pretrain", "--data", str(data), "--out", str(out), *ARGS]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "PREFECT_API_URL": str(get_current_settings().api.url)})


def _final_state(run):
    return json.loads((run / "checkpoints" / f"step-{STEPS:06d}" / "state.json").read_text())


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_killed_training_process_resumes_to_the_same_run(shards, tmp_path):  # noqa: F811
    # The uninterrupted run, in this process: loop.train is what the CLI's pretrain flow runs.
    loop.train("pretrain", load_profile("tiny", {**OVERRIDES, "train.pretrain.max_steps": STEPS}), shard_urls(shards),
               tmp_path / "whole")

    killed = _pretrain(shards, tmp_path / "killed")
    first = tmp_path / "killed" / "checkpoints" / "step-000002"
    deadline = time.monotonic() + 600
    while not (first / "state.json").exists():  # the checkpoint is renamed into place when complete
        assert killed.poll() is None, "finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)  # the process and everything it started
    killed.wait(timeout=60)
    assert not (tmp_path / "killed" / "model").exists()

    again = _pretrain(shards, tmp_path / "killed")
    assert again.wait(timeout=600) == 0, again.stderr.read().decode()[-2000:]
    resumed, reference = _final_state(tmp_path / "killed"), _final_state(tmp_path / "whole")
    assert resumed["losses"] == reference["losses"] and len(reference["losses"]) == STEPS
    for name in ("weights.safetensors", "optimizer.safetensors"):
        assert (tmp_path / "killed" / "checkpoints" / f"step-{STEPS:06d}" / name).read_bytes() == \
               (tmp_path / "whole" / "checkpoints" / f"step-{STEPS:06d}" / name).read_bytes()
