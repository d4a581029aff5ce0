"""Multi-node training launch: the runtime config → `accelerate launch` options, and two "machines" on
this one (two launchers on 127.0.0.1) joining one job of world size 2."""

import json
import sys
import threading

import pytest

from mumu.config import load_profile
from mumu.errors import UserError
from mumu.launch import accelerate_argv, run_launcher
from tasks.train import _launch_argv
from tests.server_api import wait_for
from tests.test_flow_train import shards  # noqa: F401  (module fixture: tiny ground-truth shards)
from tests.test_launch import _free_port


def _runtime(**overrides):
    return load_profile("tiny", {f"runtime.{k}": v for k, v in overrides.items()}).runtime


def test_one_machine_trains_in_process_unless_it_has_several_processes():
    assert not _runtime().launches_training and _runtime().multi_node_launch_args() == []
    assert _runtime(train_processes=4).launches_training and _runtime(train_processes=4).train_world_size == 4


def test_multi_node_options_name_every_process_and_the_rank0_machine(tmp_path):
    cfg = load_profile("tiny", {"runtime.train_processes": 8, "runtime.train_machines": 2,
                                "runtime.train_machine_rank": 1, "runtime.train_main_address": "10.0.0.5:29500",
                                "train.tune.max_steps": 7})
    assert cfg.runtime.launches_training and cfg.runtime.train_world_size == 16
    argv = _launch_argv("tune", cfg, "D", str(tmp_path), "I", resume=False)
    assert argv[:5] == [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "16"]
    assert argv[5:13] == ["--num_machines", "2", "--machine_rank", "1", "--main_process_ip", "10.0.0.5",
                          "--main_process_port", "29500"]
    config = str(tmp_path / "config.yaml")
    assert argv[13:] == ["-m", "mumu.train.entry", "tune", "--profile", config, "--data", "D", "--out", str(tmp_path),
                         "--init", "I", "--no-resume"]
    assert load_profile(config) == cfg  # every launched process reads the config the task was given


@pytest.mark.parametrize("overrides, message", [
    ({"runtime.train_machines": 2}, "train_main_address"),
    ({"runtime.train_machines": 2, "runtime.train_main_address": "node0"}, "host:port"),
    ({"runtime.train_machines": 2, "runtime.train_main_address": "node0:29500", "runtime.train_machine_rank": 2},
     "train_machine_rank must be in [0, 2)"),
    ({"runtime.train_processes": 0}, "runtime.train_processes: Input should be greater than or equal to 1"),
])
def test_bad_multi_node_settings_are_one_line_user_errors(overrides, message):
    with pytest.raises(UserError) as info:
        load_profile("tiny", overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_two_machines_on_localhost_join_one_job(tmp_path):
    """Each "machine" runs its own launcher with its rank's options, as each node's worker would."""
    (tmp_path / "rank_report.py").write_text(
        "import os\nimport torch.distributed as dist\n"
        "dist.init_process_group('gloo')\n"
        "t = __import__('torch').tensor([int(os.environ['RANK']) + 1])\n"
        "dist.all_reduce(t)\n"
        "print('rank', os.environ['RANK'], 'of', os.environ['WORLD_SIZE'], 'sum', int(t), flush=True)\n"
        "dist.destroy_process_group()\n"
    )
    address = f"127.0.0.1:{_free_port()}"
    lines: dict[int, list[str]] = {0: [], 1: []}
    errors = []

    def machine(rank: int) -> None:
        rt = _runtime(train_machines=2, train_machine_rank=rank, train_main_address=address)
        argv = accelerate_argv("rank_report", num_processes=rt.train_world_size,
                               launch_args=[*rt.multi_node_launch_args(), "--multi_gpu", "--mixed_precision", "no",
                                            "--dynamo_backend", "no"])
        try:
            run_launcher(argv, lines[rank].append, env={"PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"})
        except Exception as exc:  # noqa: BLE001  (reported below, with the lines)
            errors.append(exc)

    threads = [threading.Thread(target=machine, args=(rank,)) for rank in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert not errors, errors
    # each launcher ran its own rank, and the all-reduce crossed machines: 1 + 2
    assert [line for line in lines[0] if line.startswith("rank ")] == ["rank 0 of 2 sum 3"]
    assert [line for line in lines[1] if line.startswith("rank ")] == ["rank 1 of 2 sum 3"]


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_pretrain_flow_trains_under_accelerate_launch_with_two_processes(shards, tmp_path):  # noqa: F811
    """runtime.train_processes=2: the training task spawns `accelerate launch` (two CPU processes here,
    one per GPU on a GPU machine), streams their lines into the run's logs and resumes on a re-run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    from flows.pretrain import pretrain

    overrides = {"train.pretrain.checkpoint_every": 2, "train.pretrain.sample_every": 0,
                 "train.pretrain.log_every": 1, "train.pretrain.batch_size": 2, "runtime.train_processes": 2,
                 "train.pretrain.max_steps": 4}
    state = pretrain(data=str(shards), out=str(tmp_path / "run"), overrides=overrides, return_state=True)
    result = state.result()
    assert result["steps"] == 4 and result["resumed_from"] == 0
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    losses = json.loads((tmp_path / "run" / "checkpoints" / "step-000004" / "state.json").read_text())["losses"]
    assert len(losses) == 4 and result["final_loss"] == pytest.approx(losses[-1])

    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        def forwarded():
            logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            lines = [log.message for log in logs if log.message.startswith("pretrain step ")]
            return lines if len(lines) >= 4 else None  # logs reach the API in batches: wait for all four

        messages = wait_for("the launched processes' lines in the run's logs", forwarded, 30)
    # the main process prints one line per step, as it trains (the other rank is quiet)
    assert [m.split(":")[0] for m in messages] == [f"pretrain step {i}" for i in range(1, 5)]

    again = pretrain(data=str(shards), out=str(tmp_path / "run"), overrides=overrides)
    assert again["resumed_from"] == 4 and again["final_loss"] == result["final_loss"]
