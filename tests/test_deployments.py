"""prefect.yaml end to end on a real local server: deploy --all, a process worker runs build-data to
Completed, the UI shows that run in a real browser (headless Debian chromium), the watcher's event
triggers build-data, stage events trigger the next stage with templated parameters (build-data → cache-features →
pretrain → tune → evaluate).

Runs in its own PREFECT_HOME with `prefect server start` on a free port (not the session test harness:
workers and triggers need a real server). Only the processes started here are stopped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deployments.local_server import local_server, prefect_cli, worker
from deployments.ui_check import (
    INSTALL_HINT,
    dump_dom,
    find_chromium,
    flow_run_url,
    page_text,
)
from mumu import SAMPLES_DIR
from mumu.stage_list import STAGES
from tests.server_api import Api, tail, wait_completed, wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
POOL = "mumu-process"
EXPECTED = {*(s.deployment for s in STAGES), "pipeline/nightly", "watch-inputs/inbox"}
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _emit(env, event, resource, payload):
    prefect_cli(["event", "emit", event, "--resource", json.dumps(resource), "--payload", json.dumps(payload)], env)


def _chromium_or_reason() -> str | None:
    """None when the UI check can run; else why not. In CI (env CI set) a missing browser is a failure,
    said before the server is started, so the browser check can never be skipped there unnoticed."""
    if find_chromium() is not None:
        return None
    if os.environ.get("CI"):
        pytest.fail(f"CI: no chromium on PATH for the Prefect UI check; {INSTALL_HINT}", pytrace=False)
    return f"Prefect UI check not run (the rest of this test passed): no chromium on PATH; {INSTALL_HINT}"


def _check_ui_shows_run(env, api, run_id, flow_name, png: Path) -> str:
    """Headless chromium on the UI's page of a completed flow run (served by the same server): the
    rendered page shows the run's name, its Completed state, its task-run count and its flow, and a
    screenshot of that same page load is a real image of the window, with the Completed badge's green."""
    run = api.run(run_id)
    assert run["state"]["name"] == "Completed"
    n_tasks = api.task_run_count(run_id)
    assert n_tasks > 0
    ui = env["PREFECT_API_URL"].removesuffix("/api")
    text = page_text(dump_dom(flow_run_url(ui, run_id), screenshot_to=png))
    # the run header, in page order: "<name> <tags> +0 Completed <start> <duration> <n> Task runs Flow build-data"
    header = (rf"{re.escape(run['name'])} (?P<tags>.{{0,200}}?)Completed .{{0,80}}? {n_tasks} Task runs? "
              rf"Flow {re.escape(flow_name)}\b")
    shown = re.search(header, text)
    assert shown, f"flow run page does not show {header!r}; page text:\n{text[:3000]}"
    assert {t for t in shown["tags"].split() if not re.fullmatch(r"\+\d+", t)} == set(run["tags"])

    with Image.open(png) as img:
        assert (img.format, img.size) == ("PNG", (1600, 1000))  # ui_check.DEFAULT_SIZE
        rgb = np.asarray(img.convert("RGB")).astype(int)
    assert rgb.reshape(-1, 3).std(axis=0).min() > 5, "screenshot is (nearly) one flat colour"
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 100
    # the Completed state badge in the header (Prefect 3.8's green, ~(33,157,75)); a page that did not
    # render the run (loading, 404, another state) has none of it up there
    r, g, b = rgb[:100, :800, 0], rgb[:100, :800, 1], rgb[:100, :800, 2]
    assert ((g > r + 60) & (g > b + 40)).sum() > 500
    return text


def test_deploy_all_run_build_data_on_a_worker_and_chain_by_events(tmp_path):
    no_ui_check = _chromium_or_reason()
    home = tmp_path / "prefect-home"
    worker_log = tmp_path / "worker.log"
    started = time.monotonic()
    phase = lambda name: print(f"[{time.monotonic() - started:6.1f} s] {name}", flush=True)  # noqa: E731
    with local_server(home) as env:
        phase("server healthy")
        api = Api(env)
        # the setup steps of docs/operations.md
        prefect_cli(["work-pool", "create", POOL, "--type", "process"], env)
        prefect_cli(["work-pool", "set-concurrency-limit", POOL, "4"], env)
        prefect_cli(["work-queue", "create", "gpu", "--pool", POOL, "--limit", "1"], env)
        prefect_cli(["--no-prompt", "deploy", "--all"], env, cwd=REPO, timeout=400)
        phase("deployed")

        deployments = api.deployments()
        assert set(deployments) == EXPECTED
        queues = {name: d["work_queue_name"] for name, d in deployments.items()}
        assert {n for n, q in queues.items() if q == "gpu"} == {*(s.deployment for s in STAGES if s.queue == "gpu"),
                                                             "pipeline/nightly"}
        assert all(d["work_pool_name"] == POOL for d in deployments.values())
        assert all(d["pull_steps"] == [{"prefect.deployments.steps.set_working_directory":
                                        {"directory": str(REPO)}}] for d in deployments.values())
        gpu_queue = api.http.post(f"/work_pools/{POOL}/queues/filter", json={}).json()
        assert {q["name"]: q["concurrency_limit"] for q in gpu_queue}["gpu"] == 1
        schedules = {name: [s["active"] for s in d["schedules"]] for name, d in deployments.items()}
        assert schedules["pipeline/nightly"] == [False] and schedules["watch-inputs/inbox"] == [True]
        # Only the runs this test starts: no scheduled watcher polls of the checkout's runs/inbox.
        prefect_cli(["deployment", "schedule", "pause", "--all"], env)

        # The worker serves the "default" queue only: the gpu-queue runs the triggers create stay
        # Scheduled, so their parameters can be checked without training anything here. It polls every
        # second (default 10 s) to keep this test short.
        fast = {**env, "PREFECT_WORKER_QUERY_SECONDS": "1"}
        with worker(POOL, fast, cwd=tmp_path, queues=["default"], log_path=worker_log):
            log = lambda: f"worker log:\n{tail(worker_log)}\nserver log:\n{tail(home / 'server.log', 30)}"  # noqa: E731

            # 1. a manual deployment run, parameters from the command line; and at the same time
            # 2. files land → the watcher deployment emits mumu.data.landed → a build-data run on them
            out = tmp_path / "data"
            ran = prefect_cli(["deployment", "run", "build-data/mumu", "--param", f"input_path={SAMPLES_DIR}",
                               "--param", f"out={out}"], env)
            manual_id = UUID.search(ran.stdout).group(0)
            inbox, landed = tmp_path / "inbox", tmp_path / "landed"
            inbox.mkdir()
            for p in sorted(SAMPLES_DIR.glob("*.png"))[:3]:
                shutil.copy(p, inbox / p.name)
            ran = prefect_cli(["deployment", "run", "watch-inputs/inbox", "--param", f"input_dir={inbox}",
                               "--param", f"out={landed}", "--param", "settle_seconds=0"], env)
            wait_completed(api, UUID.search(ran.stdout).group(0), 180, log)
            phase("watcher run completed")

            build_id = deployments["build-data/mumu"]["id"]
            triggered = wait_for(
                "the build-data run triggered by mumu.data.landed",
                lambda: [r for r in api.runs_of(build_id) if r["parameters"].get("input_path") == str(inbox)],
                90, on_timeout=log,
            )
            assert len(triggered) == 1
            assert triggered[0]["parameters"]["out"] == f"{landed}/data"

            wait_completed(api, manual_id, 240, log)
            phase("manual build-data run completed")
            manifest = json.loads((out / "manifest.json").read_text())
            n_inputs = len(list(SAMPLES_DIR.glob("*.png")))
            assert manifest["inputs"] == n_inputs == manifest["written"] + manifest["quarantined"]
            assert manifest["written"] > 0
            for shard in manifest["shards"]:
                assert (out / shard["name"]).stat().st_size > 0
            # the finished top-level build-data run announced itself: its cache-features run was created (on the
            # gpu queue, which this worker does not serve)
            chained = wait_for("the cache-features run triggered by the real build-data completion",
                            lambda: [r for r in api.runs_of(deployments["cache-features/mumu"]["id"])
                                     if r["parameters"]["data"] == str(out)], 90, on_timeout=log)
            assert chained[0]["parameters"] == {"data": str(out), "profile": "tiny"}

            wait_completed(api, triggered[0]["id"], 240, log)
            phase("triggered build-data run completed")
            landed_manifest = json.loads((landed / "data" / "manifest.json").read_text())
            assert landed_manifest["inputs"] == 3

        phase("worker stopped")
        # the UI (the same server) in a real browser, on the manual build-data run's page
        if no_ui_check is None:
            text = _check_ui_shows_run(env, api, manual_id, "build-data", tmp_path / "flow-run.png")
            assert f"Flow build-data Deployment mumu Work Pool {POOL} Work Queue default" in text
            phase("UI checked in headless chromium")

        # 3. a stage's completion (top-level deployment run: "mumu.chain" true) starts the next stage,
        #    its parameters rendered from the event payload
        run_root = tmp_path / "chain"
        _emit(env, "mumu.stage.completed",
              {"prefect.resource.id": "mumu.stage.pretrain", "mumu.stage": "pretrain", "mumu.chain": "true"},
              {"out": f"{run_root}/pretrain", "data": f"{run_root}/data"})
        tune_id = deployments["tune/mumu"]["id"]
        server_log = lambda: "server log:\n" + tail(home / "server.log")  # noqa: E731
        # (the build-data run above now chains for real: only the runs of this chain's folders count here)
        tune_runs = wait_for("the tune run triggered by pretrain's completion",
                          lambda: [r for r in api.runs_of(tune_id) if r["parameters"]["out"] == f"{run_root}/tune"],
                          90, on_timeout=server_log)
        assert len(tune_runs) == 1
        assert tune_runs[0]["parameters"] == {"data": f"{run_root}/data", "init": f"{run_root}/pretrain",
                                              "out": f"{run_root}/tune", "profile": "tiny"}
        # ... and a stage run inside the pipeline ("mumu.chain" false) starts nothing
        _emit(env, "mumu.stage.completed",
              {"prefect.resource.id": "mumu.stage.tune", "mumu.stage": "tune", "mumu.chain": "false"},
              {"out": f"{run_root}/tune", "data": f"{run_root}/data"})
        _emit(env, "mumu.stage.completed",
              {"prefect.resource.id": "mumu.stage.build-data", "mumu.stage": "build-data", "mumu.chain": "true"},
              {"out": f"{run_root}/data"})
        cache_runs = wait_for("the cache-features run triggered by build-data's completion",
                              lambda: [r for r in api.runs_of(deployments["cache-features/mumu"]["id"])
                                       if r["parameters"]["data"] == f"{run_root}/data"], 90,
                              on_timeout=server_log)
        assert cache_runs[0]["parameters"] == {"data": f"{run_root}/data", "profile": "tiny"}
        # cache-features announces the data folder it cached: pretrain trains on it, into the sibling folder
        _emit(env, "mumu.stage.completed",
              {"prefect.resource.id": "mumu.stage.cache-features", "mumu.stage": "cache-features",
               "mumu.chain": "true"},
              {"out": f"{run_root}/data", "key": "0123456789abcdef"})
        pretrain_id = deployments["pretrain/mumu"]["id"]
        pretrain_runs = wait_for("the pretrain run triggered by cache-features' completion",
                              lambda: [r for r in api.runs_of(pretrain_id)
                                       if r["parameters"]["data"] == f"{run_root}/data"], 90,
                              on_timeout=server_log)
        assert pretrain_runs[0]["parameters"]["out"] == f"{run_root}/pretrain"
        # the chain=false event was emitted before the one just seen: its automation has had its chance
        time.sleep(3)
        assert [r for r in api.runs_of(deployments["evaluate/mumu"]["id"])
                if r["parameters"]["checkpoint"] == f"{run_root}/tune"] == []
        phase("event chain checked")
    if no_ui_check:
        pytest.skip(no_ui_check)
