"""The cache-features flow under Prefect: the CLI writes one sidecar per data shard, a re-run computes nothing, a
transient failure of a shard group is retried (visible in its task states) and only its unfinished shards redone."""

from __future__ import annotations

import json

import pytest

from mumu.cli import main
from mumu.config import load_profile
from mumu.data import stages
from mumu.train import feature_stage
from mumu.train.features import EMPTY_PROMPT, cache_dir, read_empty_prompt
from models.hf import idefics2_config
from tests.scenes import write_scene_folder

pytestmark = pytest.mark.usefixtures("prefect_server")
# Three data shards of two samples, one shard per task run: the three groups run at once on the thread runner.
SMALL = {"data.ingest.images_per_shard": 2, "runtime.shards_per_task": 1}


@pytest.fixture
def data(tmp_path):
    src, out = tmp_path / "scenes", tmp_path / "data"
    oracle = write_scene_folder(src, range(900, 906))
    stages.run_local(src, out, load_profile("tiny", SMALL).data, None, oracle, oracle, "test")
    return out


def _cli(data, capsys, overrides=SMALL) -> str:
    args = ["cache-features", "--data", str(data)]
    for k, v in overrides.items():
        args += ["--set", f"{k}={v}"]
    assert main(args) == 0
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_cli_caches_every_shard_once_and_a_rerun_computes_nothing(data, capsys, monkeypatch):
    line = _cli(data, capsys)
    manifest = json.loads(next((data / "features").glob("*/manifest.json")).read_text())
    folder = cache_dir(data, manifest["key"])
    assert line == f"cached features of 6 samples in 3 shards ({manifest['bytes'] / 1e6:.1f} MB) to {folder}"
    assert [s["samples"] for s in manifest["shards"]] == [2, 2, 2]
    assert load_profile(str(folder / "config.yaml")) == load_profile("tiny", SMALL)  # the config it ran with
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    monkeypatch.setattr(feature_stage.FrozenParts, "compute", lambda *a: pytest.fail("recomputed a finished shard"))
    _cli(data, capsys)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_a_transient_failure_is_retried_and_redoes_only_its_shard(data, capsys, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    real, calls = feature_stage.cache_shard, []

    def flaky(plan, shard, parts, batch_size):
        calls.append(shard.shard)
        if calls.count(shard.shard) == 1 and shard.shard == 1:
            raise ConnectionError("transient: device busy")
        return real(plan, shard, parts, batch_size)

    monkeypatch.setattr(feature_stage, "cache_shard", flaky)
    _cli(data, capsys)
    assert sorted(calls) == [0, 1, 1, 2]
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="cache-shard-group")))
        histories = [[s.name for s in client.read_task_run_states(r.id)] for r in runs]
    assert any("AwaitingRetry" in h or "Retrying" in h for h in histories), histories
    manifest = json.loads(next((data / "features").glob("*/manifest.json")).read_text())
    assert manifest["samples"] == 6


def test_a_prompt_cache_gets_the_empty_prompt_and_a_rerun_restores_only_it(data, capsys, monkeypatch):
    """UNIMO-G's recipe (encoder frozen): the flow caches the empty prompt's states beside the sidecars (training
    then needs no encoder); a cache that lost them gets them back without recomputing a shard."""
    prompt = {**SMALL, "model.encoder.train_language_model": "frozen", "model.encoder.lora.enabled": False,
              "train.tune.prompt_mode": "unimo"}
    _cli(data, capsys, prompt)
    manifest = json.loads(next((data / "features").glob("*/manifest.json")).read_text())
    assert list(manifest["spec"]["parts"]) == ["latents", "prompt"]
    folder = cache_dir(data, manifest["key"])
    empty = read_empty_prompt(folder, manifest["key"])
    config, _ = idefics2_config(load_profile("tiny").model.encoder.model)
    assert empty.prompt.shape == (1, config.text_config.hidden_size)
    assert empty.prompt.abs().sum() > 0 and empty.prompt_ids.shape == (1,)
    written = (folder / EMPTY_PROMPT).read_bytes()
    (folder / EMPTY_PROMPT).unlink()
    monkeypatch.setattr(feature_stage.FrozenParts, "compute", lambda *a: pytest.fail("recomputed a finished shard"))
    _cli(data, capsys, prompt)
    assert (folder / EMPTY_PROMPT).read_bytes() == written
