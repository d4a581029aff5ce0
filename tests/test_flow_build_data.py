"""The build-data flow end to end on the bundled samples with the tiny models, under a Prefect server."""

import json
import shutil
from pathlib import Path

import pytest
import webdataset as wds

from mumu.cli import SAMPLES_DIR, main
from mumu.config import load_profile
from mumu.data import stages

pytestmark = pytest.mark.usefixtures("prefect_server")


def _run(input_dir, out, *extra):
    return main(["build-data", "--input", str(input_dir), "--out", str(out), *extra])


def _task_runs_with_retries(flow_run_name_prefix=None):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="build-shard-group")))
        return {r.id: [s.name for s in client.read_task_run_states(r.id)] for r in runs}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    assert _run(SAMPLES_DIR, out) == 0
    return out


def test_flow_writes_reconciled_shards_that_plain_webdataset_reads(built):
    manifest = json.loads((built / "manifest.json").read_text())
    assert load_profile(str(built / "config.yaml")) == load_profile("tiny")  # the config the run used
    n_inputs = len([p for p in SAMPLES_DIR.iterdir() if p.suffix == ".png"])
    assert manifest["inputs"] == n_inputs
    assert manifest["inputs"] == manifest["written"] + manifest["quarantined"]
    assert sum(s["written"] for s in manifest["shards"]) == manifest["written"]
    for shard in manifest["shards"]:
        assert shard["inputs"] == shard["written"] + shard["quarantined"]
    # captions were given for all but a few: the tiny VLM captioned exactly those
    given = sum(1 for line in (SAMPLES_DIR / "captions.jsonl").read_text().splitlines() if line.strip())
    assert manifest["counts"]["captioned_by_vlm"] == n_inputs - given

    samples = list(wds.WebDataset([str(built / s["name"]) for s in manifest["shards"]], shardshuffle=False))
    assert len(samples) == manifest["written"]
    for sample in samples:
        record = json.loads(sample["json"])
        for segment in record["prompt_mumu"] + record["prompt_unimo"]:
            if segment["type"] == "image":
                assert segment["ref"] in sample, f"{record['key']}: missing member {segment['ref']}"


def test_rerun_is_idempotent_and_skips_finished_shards(built, tmp_path, monkeypatch):
    before = {p.name: p.read_bytes() for p in built.iterdir() if p.is_file()}
    calls = []
    monkeypatch.setattr(stages, "ingest", lambda *a, **k: calls.append(a) or pytest.fail("re-ran a finished shard"))
    assert _run(SAMPLES_DIR, built) == 0
    after = {p.name: p.read_bytes() for p in built.iterdir() if p.is_file()}
    assert before == after and not calls


def test_killed_run_resumes_and_matches_an_uninterrupted_one(built, tmp_path):
    out = tmp_path / "resumed"
    out.mkdir()
    manifest = json.loads((built / "manifest.json").read_text())
    first = manifest["shards"][0]
    # What a run killed after its first shard leaves behind: one finished shard and a torn temp file.
    stem = Path(first["name"]).stem
    for name in (first["name"], f"{stem}.report.json", f"{stem}.quarantine.jsonl"):
        shutil.copy(built / name, out / name)
    (out / ".shard-00001.tar.123.tmp").write_bytes(b"torn")
    assert _run(SAMPLES_DIR, out) == 0
    for shard in manifest["shards"]:
        assert (out / shard["name"]).read_bytes() == (built / shard["name"]).read_bytes()
    assert (out / "manifest.json").read_bytes() == (built / "manifest.json").read_bytes()


def test_transient_failure_is_retried_and_visible_in_task_states(tmp_path, monkeypatch):
    real_detect, failed = stages.detect, []

    def flaky_detect(work, detector):
        if not failed:
            failed.append(True)
            raise ConnectionError("transient: device busy")
        return real_detect(work, detector)

    monkeypatch.setattr(stages, "detect", flaky_detect)
    src = tmp_path / "in"
    src.mkdir()
    for p in sorted(SAMPLES_DIR.glob("scene_00[0-3].png")):
        shutil.copy(p, src / p.name)
    assert _run(src, tmp_path / "out") == 0
    assert failed == [True]
    histories = _task_runs_with_retries()
    assert any("AwaitingRetry" in states or "Retrying" in states for states in histories.values()), histories
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["inputs"] == 4 == manifest["written"] + manifest["quarantined"]


def test_bad_input_folder_is_one_line_error(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _run(empty, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mumu: error:")


def test_shards_written_under_another_config_are_rebuilt(built, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(built, out)
    before = json.loads((out / "manifest.json").read_text())
    assert _run(SAMPLES_DIR, out, "--set", "data.compose.min_crop_side=100000") == 0
    after = json.loads((out / "manifest.json").read_text())
    assert after["config_hash"] != before["config_hash"]
    assert after["written"] == before["written"] and after["counts"].get("crops_kept", 0) == 0  # rebuilt
    assert after["counts"].get("crops_small", 0) > 0
    assert all(s["config_hash"] == after["config_hash"] for s in after["shards"])
