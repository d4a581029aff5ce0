"""build-data on prefect-dask's DaskTaskRunner (a local cluster of 2 worker processes), started from the
CLI with no Prefect server: the same shards, byte for byte, as the in-process thread runner, and the
workers report to the one temporary API of the run instead of each starting its own."""

import json
import os
import subprocess
import sys

import pytest

from mumu import SAMPLES_DIR

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_server")]
SMALL = {"data.ingest.images_per_shard": 4}


def test_dask_workers_build_the_same_shards_and_share_the_runs_temporary_api(tmp_path):
    from flows.build_data import build_data

    inputs = tmp_path / "in"
    inputs.mkdir()
    for p in sorted(SAMPLES_DIR.glob("*.png"))[:12]:
        (inputs / p.name).write_bytes(p.read_bytes())
    build_data(input_path=str(inputs), out=str(tmp_path / "thread"), overrides=SMALL)

    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_LOGGING_LEVEL="INFO")
    sets = [f"--set={k}={v}" for k, v in {**SMALL, "runtime.task_runner": "dask", "runtime.workers": 2}.items()]
    done = subprocess.run([sys.executable, "-m", "mumu.cli", "build-data", "--input", str(inputs),
                           "--out", str(tmp_path / "dask"), *sets],
                          env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    # one temporary Prefect API for the whole run: the Dask worker processes were pointed at it
    assert output.count("Starting temporary server on") == 1, output[-3000:]

    manifest = json.loads((tmp_path / "dask" / "manifest.json").read_text())
    assert manifest["inputs"] == 12 == manifest["written"] + manifest["quarantined"] and len(manifest["shards"]) == 3
    assert manifest == json.loads((tmp_path / "thread" / "manifest.json").read_text())
    for shard in manifest["shards"]:
        assert (tmp_path / "dask" / shard["name"]).read_bytes() == (tmp_path / "thread" / shard["name"]).read_bytes()
