"""The whole DAG (every stage of mumu/stage_list.py) as one parent flow, and its resume on re-run."""

import json
from pathlib import Path

import pytest

from mumu import SAMPLES_DIR
from mumu.config import config_hash, load_profile
from mumu.stage_list import run_folders, top_folders

pytestmark = pytest.mark.usefixtures("prefect_server")

SMALL = {
    "train.pretrain.max_steps": 2, "train.tune.max_steps": 2,
    "train.pretrain.sample_every": 0, "train.tune.sample_every": 0,
    "eval.samples_per_prompt": 1, "eval.sampler.steps": 2,
    "eval.benchmark.max_subjects": 3, "eval.benchmark.max_templates": 1, "eval.benchmark.multi_combinations": 1,
}


def _snapshot(root):
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file() and ("chunks" in p.parts or p.suffix == ".tar" or "checkpoints" in p.parts)}


def test_pipeline_runs_every_stage_and_a_rerun_redoes_nothing(tmp_path):
    from flows.pipeline import pipeline
    from prefect.client.orchestration import get_client

    result = pipeline(input_path=str(SAMPLES_DIR), out=str(tmp_path), overrides=SMALL)
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["inputs"] == manifest["written"] + manifest["quarantined"] == 24
    # the feature cache of the tiny model: every sample's VAE posterior, every crop's vision features
    (cache,) = (tmp_path / "data" / "features").glob("*/manifest.json")
    features = json.loads(cache.read_text())
    assert features["samples"] == manifest["written"] and list(features["spec"]["parts"]) == ["latents", "vision"]
    assert sum(s["tensors"]["posterior"] for s in features["shards"]) == manifest["written"]
    assert config_hash(load_profile(str(cache.parent / "config.yaml"))) == config_hash(load_profile("tiny", SMALL))
    for stage in ("pretrain", "tune"):
        assert (tmp_path / stage / "model" / "mumu_config.json").is_file()
        assert (tmp_path / stage / "checkpoints" / "step-000002").is_dir()
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert {r["Benchmark"] for r in report["rows"]} == {"toy-single", "toy-multi"}
    assert all(-1 <= r["DINO"] <= 1 and -1 <= r["CLIP-T"] <= 1 for r in report["rows"])
    assert result == {**run_folders(tmp_path), "report": str(tmp_path / "eval" / "report.md")}
    assert all(Path(folder).is_dir() for folder in run_folders(tmp_path).values())  # every stage wrote its folder
    resolved = config_hash(load_profile("tiny", SMALL))
    for folder in ("", *top_folders()):  # every run folder holds the config it ran with
        assert config_hash(load_profile(str(tmp_path / folder / "config.yaml"))) == resolved, folder
    with get_client(sync_client=True) as client:
        artifact = client.read_latest_artifacts(limit=50)
    assert {"evaluation", "build-data-counts"} <= {a.key for a in artifact}

    before = _snapshot(tmp_path)
    pipeline(input_path=str(SAMPLES_DIR), out=str(tmp_path), overrides=SMALL)
    assert _snapshot(tmp_path) == before  # shards, checkpoints and generated chunks all reused
