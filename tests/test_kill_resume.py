"""A training process killed (SIGKILL) mid-stage and started again finishes as if never interrupted."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.test_flow_train import shards  # noqa: F401  (module fixture: tiny ground-truth shards)

STEPS = 6
ARGS = ["--max-steps", str(STEPS), "--set", "train.pretrain.checkpoint_every=2",
        "--set", "train.pretrain.sample_every=0"]


def _pretrain(data, out) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mumu.cli", "pretrain", "--data", str(data), "--out", str(out), *ARGS]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"})


def _final_state(run):
    return json.loads((run / "checkpoints" / f"step-{STEPS:06d}" / "state.json").read_text())


@pytest.mark.slow
def test_killed_training_process_resumes_to_the_same_run(shards, tmp_path):  # noqa: F811
    whole = _pretrain(shards, tmp_path / "whole")
    assert whole.wait(timeout=600) == 0, whole.stderr.read().decode()[-2000:]

    killed = _pretrain(shards, tmp_path / "killed")
    first = tmp_path / "killed" / "checkpoints" / "step-000002"
    deadline = time.monotonic() + 600
    while not (first / "state.json").exists():  # the checkpoint is renamed into place when complete
        assert killed.poll() is None, "finished before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(killed.pid, signal.SIGKILL)  # the process, its Prefect server, everything it started
    killed.wait(timeout=60)
    assert not (tmp_path / "killed" / "model").exists()

    again = _pretrain(shards, tmp_path / "killed")
    assert again.wait(timeout=600) == 0, again.stderr.read().decode()[-2000:]
    resumed, reference = _final_state(tmp_path / "killed"), _final_state(tmp_path / "whole")
    assert resumed["losses"] == reference["losses"] and len(reference["losses"]) == STEPS
    for name in ("weights.safetensors", "optimizer.safetensors"):
        assert (tmp_path / "killed" / "checkpoints" / f"step-{STEPS:06d}" / name).read_bytes() == \
               (tmp_path / "whole" / "checkpoints" / f"step-{STEPS:06d}" / name).read_bytes()
