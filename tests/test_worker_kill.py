"""Killing the worker mid-stage, on a real server, and running the deployment again:

1. the worker alone killed: its flow run (Prefect runs it in a session of its own) stops and ends Crashed;
2. the machine lost (worker and flow run killed at once): the run is orphaned "Running", holding the gpu
   queue's one slot, until the heartbeat automation (deployments/automations.yaml) marks it Crashed;
3. the deployment run again waits for that, resumes from the last checkpoint, and finishes with the same
   model as a run never interrupted: same losses, byte-identical weights and optimizer state.
"""
from __future__ import annotations

import json
import os
import re
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest

from deployments.local_server import local_server, prefect_cli, worker
from mumu.config import load_profile
from mumu.data.shards import shard_urls
from mumu.train import loop
from tests.server_api import Api, tail, wait_completed, wait_for
from tests.test_flow_train import shards  # noqa: F401  (module fixture: tiny ground-truth shards)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
POOL = "mumu-process"
STEPS = 24
# Batch 16: a step takes long enough (~0.3 s on 2 cores) that a run cannot finish between two polls of the test,
# nor between its worker's death and its own notice of it (at batch 2 a step took 0.05 s and a run resumed from
# step 8 had written 10 and 12 before the test first looked).
OVERRIDES = {"train.pretrain.checkpoint_every": 2, "train.pretrain.sample_every": 0, "train.pretrain.batch_size": 16}


UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _run_deployment(env, params: dict) -> str:
    """`prefect deployment run pretrain/mumu --params JSON` → the new flow run's id."""
    ran = prefect_cli(["deployment", "run", "pretrain/mumu", "--params", json.dumps(params)], env)
    return UUID.search(ran.stdout).group(0)


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _wait_checkpoint(out: Path, step: int, log) -> None:
    state = out / "checkpoints" / f"step-{step:06d}" / "state.json"  # renamed into place when complete
    wait_for(f"checkpoint {step}", state.exists, 300, interval=0.05, on_timeout=log)


def _last_checkpoint(out: Path) -> int:
    done = [int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("step-*") if (p / "state.json").exists()]
    return max(done, default=0)


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not yet reaped by its parent, counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (from /proc: field 4 of /proc/N/stat is the parent's pid)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def _final_checkpoint(run: Path) -> Path:
    return run / "checkpoints" / f"step-{STEPS:06d}"


def test_killed_worker_and_lost_machine_then_a_rerun_resumes_to_the_same_model(shards, tmp_path):  # noqa: F811
    reference = tmp_path / "reference"
    overrides = {**OVERRIDES, "train.pretrain.max_steps": STEPS}
    loop.train("pretrain", load_profile("tiny", overrides), shard_urls(shards), reference)

    out = tmp_path / "pretrain"
    params = {"data": str(shards), "out": str(out), "overrides": overrides}
    started = time.monotonic()
    phase = lambda name: print(f"[{time.monotonic() - started:6.1f} s] {name}", flush=True)  # noqa: E731
    with local_server(tmp_path / "home") as env:
        api = Api(env)
        prefect_cli(["automation", "create", "--from-file", str(REPO / "deployments" / "automations.yaml")], env)
        prefect_cli(["work-pool", "create", POOL, "--type", "process"], env)
        prefect_cli(["work-queue", "create", "gpu", "--pool", POOL, "--limit", "1"], env)
        prefect_cli(["--no-prompt", "deploy", "--name", "pretrain/mumu"], env, cwd=REPO, timeout=400)
        deployment = api.deployments()["pretrain/mumu"]
        assert deployment["job_variables"]["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"] == "30"
        phase("server, automation, deployment ready")

        fast = {**env, "PREFECT_WORKER_QUERY_SECONDS": "1"}
        logs = [tmp_path / f"worker-{i}.log" for i in (1, 2, 3)]
        log = lambda: "\n".join(f"{p.name}:\n{tail(p)}" for p in logs)  # noqa: E731

        # 1. the worker alone is killed: Prefect's process worker runs each flow run in a session of its
        #    own, which notices its supervisor gone, stops and reports Crashed itself
        first = _run_deployment(env, params)
        with worker(POOL, fast, cwd=tmp_path, queues=["gpu"], log_path=logs[0], new_session=True) as lost:
            _wait_checkpoint(out, 2, log)
            flow_runs = _children(lost.pid)
            lost.send_signal(signal.SIGKILL)
            lost.wait(timeout=30)
        wait_for("the run whose worker died to end Crashed",
                 lambda: api.run(first)["state"]["type"] == "CRASHED", 120, on_timeout=log)
        # It may save a checkpoint or two more before it notices its worker gone: the next run resumes from the
        # last one its process wrote before it exited.
        wait_for("the crashed run's process to exit", lambda: not any(map(_alive, flow_runs)), 60, on_timeout=log)
        resumed_from = _last_checkpoint(out)
        phase(f"worker killed after checkpoint 2; its run ended Crashed after checkpoint {resumed_from}")
        assert flow_runs and 2 <= resumed_from <= STEPS - 6, resumed_from
        assert not _final_checkpoint(out).exists() and not (out / "model").exists()

        # 2. the machine is lost: worker and flow-run process killed at once, so nobody reports the end
        second = _run_deployment(env, params)
        with worker(POOL, fast, cwd=tmp_path, queues=["gpu"], log_path=logs[1], new_session=True) as lost:
            _wait_checkpoint(out, resumed_from + 2, log)  # resumed and went on
            for pid in [*_children(lost.pid), lost.pid]:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            lost.wait(timeout=30)
        phase(f"worker and its flow-run process killed after checkpoint {resumed_from + 2}")
        assert not _final_checkpoint(out).exists() and not (out / "model").exists()
        assert api.run(second)["state"]["type"] == "RUNNING"  # an orphan: it holds the gpu queue's slot

        # 3. the deployment run again, on a new worker: it waits for the slot the orphan holds until the
        #    heartbeat automation marks the orphan Crashed, then resumes from its last checkpoint
        third = _run_deployment(env, params)
        with worker(POOL, fast, cwd=tmp_path, queues=["gpu"], log_path=logs[2]):
            crashed = wait_for("the automation to mark the orphaned run Crashed",
                               lambda: (r := api.run(second))["state"]["type"] == "CRASHED" and r, 240,
                               on_timeout=log)
            phase("orphaned run marked Crashed by the automation")
            assert "No heartbeat for 90 s" in crashed["state"]["message"]
            done = wait_completed(api, third, 300, log)
            phase("re-run completed")
        assert _time(done["start_time"]) >= _time(crashed["state"]["timestamp"])
        assert [s["type"] for s in api.states(second)][-2:] == ["RUNNING", "CRASHED"]
        assert done["parameters"] == {**params, "profile": "tiny"}

    resumed = json.loads((_final_checkpoint(out) / "state.json").read_text())
    whole = json.loads((_final_checkpoint(reference) / "state.json").read_text())
    assert resumed["losses"] == whole["losses"] and len(whole["losses"]) == STEPS
    for name in ("weights.safetensors", "optimizer.safetensors"):
        assert (_final_checkpoint(out) / name).read_bytes() == (_final_checkpoint(reference) / name).read_bytes()
    # nothing duplicated: the re-run continued the killed run's checkpoints instead of starting a second set
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == \
        sorted(p.name for p in (reference / "checkpoints").iterdir())
    assert (out / "model" / "mumu_config.json").is_file()
