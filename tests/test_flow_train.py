"""pretrain → tune as Prefect flows on tiny shards: outputs, resume, and a crash healed by the task's retry."""

from pathlib import Path

import pytest

from mumu.config import load_profile
from mumu.data import stages
from mumu.train import loop
from tests.scenes import write_scene_folder

pytestmark = pytest.mark.usefixtures("prefect_server")
FAST = {"train.pretrain.checkpoint_every": 2, "train.pretrain.sample_every": 0,
        "train.tune.checkpoint_every": 2, "train.tune.sample_every": 0}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Eight ground-truth emoji scenes → shards (oracle boxes and masks, so every sample has entities)."""
    root, out = tmp_path_factory.mktemp("scenes"), tmp_path_factory.mktemp("shards")
    oracle = write_scene_folder(root, range(500, 508))
    cfg = load_profile("tiny")
    manifest, _ = stages.run_local(root, out, cfg.data, None, oracle, oracle, "test")
    assert manifest.written == 8
    return out


def test_pretrain_then_tune_flows_write_models_and_resume(shards, tmp_path):
    from flows.pretrain import pretrain
    from flows.tune import tune

    three = {**FAST, "train.pretrain.max_steps": 3}
    first = pretrain(data=str(shards), out=str(tmp_path / "pre"), overrides=three)
    assert first["steps"] == 3 and first["resumed_from"] == 0
    assert (tmp_path / "pre" / "model" / "mumu_config.json").is_file()
    assert sorted(p.name for p in (tmp_path / "pre" / "checkpoints").iterdir()) == ["step-000002", "step-000003"]
    ran = load_profile(str(tmp_path / "pre" / "config.yaml"))  # the resolved config, overrides included
    assert ran.train.pretrain.max_steps == 3 and ran.train.pretrain.checkpoint_every == 2
    assert ran.model_dump() == load_profile("tiny", three).model_dump()

    again = pretrain(data=str(shards), out=str(tmp_path / "pre"), overrides=three)
    assert again["resumed_from"] == 3 and again["final_loss"] == first["final_loss"]  # nothing retrained
    fresh = pretrain(data=str(shards), out=str(tmp_path / "pre"), overrides=three, resume=False)
    assert fresh["resumed_from"] == 0 and fresh["final_loss"] == first["final_loss"]  # retrained, same seed

    tuned = tune(data=str(shards), init=str(tmp_path / "pre"), out=str(tmp_path / "tune"),
                 overrides={**FAST, "train.tune.max_steps": 2, "train.tune.attn_loss.weight": 1.0})
    assert tuned["steps"] == 2 and Path(tuned["model"]).is_dir()
    ran = load_profile(str(tmp_path / "tune" / "config.yaml"))
    assert (ran.train.tune.max_steps, ran.train.tune.attn_loss.weight) == (2, 1.0)


def test_a_resumed_run_says_so_in_its_log_and_final_line(shards, tmp_path, capfd, caplog):
    """Also: --max-steps N is the override train.pretrain.max_steps=N, and raising it extends the run (max_steps is
    not part of the checkpoints' fingerprint), whichever of the two spellings each run uses."""
    from mumu.cli import main

    argv = ["pretrain", "--data", str(shards), "--out", str(tmp_path / "run")]
    argv += [a for k, v in FAST.items() for a in ("--set", f"{k}={v}")]
    assert main([*argv, "--max-steps", "2"]) == 0
    out, err = capfd.readouterr()
    assert out.strip().splitlines()[-1].startswith("pretrain: 2 steps, final loss")
    assert "resumed from" not in "\n".join([out, err, *caplog.messages])
    caplog.clear()
    assert main([*argv, "--set", "train.pretrain.max_steps=4"]) == 0
    out, err = capfd.readouterr()
    final = out.strip().splitlines()[-1]
    assert final.startswith("pretrain: 4 steps (resumed from step 2), final loss"), final
    checkpoint = tmp_path / "run" / "checkpoints" / "step-000002"
    # The run's log: Prefect's console handler (stderr) or, once pytest's log capture holds it, caplog.
    assert f"pretrain: resumed from step 2 ({checkpoint})" in "\n".join([out, err, *caplog.messages])


def test_crash_mid_stage_is_healed_by_the_task_retry_with_identical_losses(shards, tmp_path, monkeypatch):
    from flows.pretrain import pretrain

    four = {**FAST, "train.pretrain.max_steps": 4}
    reference = loop.train("pretrain", load_profile("tiny", four), stages_urls(shards), tmp_path / "ref")

    real_save, crashed = loop.save_checkpoint, []

    def save_then_crash(*args, **kwargs):
        path = real_save(*args, **kwargs)
        if not crashed:  # the process "dies" right after its first checkpoint (step 2)
            crashed.append(path)
            raise RuntimeError("simulated crash after a checkpoint")
        return path

    monkeypatch.setattr(loop, "save_checkpoint", save_then_crash)
    result = pretrain(data=str(shards), out=str(tmp_path / "run"), overrides=four)
    assert crashed and crashed[0].name == "step-000002"
    assert result["resumed_from"] == 2 and result["steps"] == 4  # the retry continued, not restarted
    assert result["final_loss"] == pytest.approx(reference.final_loss, abs=1e-6)


def stages_urls(shards):
    from mumu.data.shards import shard_urls

    return shard_urls(shards)
