"""What the tests against a real Prefect server share: a small REST client and polling with a clear failure."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

FINAL_BAD = ("FAILED", "CRASHED", "CANCELLED")


class Api:
    """The few REST calls the server tests make (the server's API at PREFECT_API_URL)."""

    def __init__(self, env: dict[str, str]):
        self.http = httpx.Client(base_url=env["PREFECT_API_URL"], timeout=30)

    def deployments(self) -> dict[str, dict]:
        """"flow/deployment" → deployment."""
        flows = {f["id"]: f["name"] for f in self.http.post("/flows/filter", json={}).json()}
        return {f"{flows[d['flow_id']]}/{d['name']}": d for d in self.http.post("/deployments/filter", json={}).json()}

    def runs_of(self, deployment_id: str) -> list[dict]:
        body = {"flow_runs": {"deployment_id": {"any_": [deployment_id]}}, "sort": "EXPECTED_START_TIME_ASC"}
        return self.http.post("/flow_runs/filter", json=body).json()

    def run(self, run_id: str) -> dict:
        return self.http.get(f"/flow_runs/{run_id}").json()

    def task_run_count(self, run_id: str) -> int:
        """Task runs of one flow run that are not subflow calls: what the UI's run header counts."""
        body = {"flow_runs": {"id": {"any_": [run_id]}}, "task_runs": {"subflow_runs": {"exists_": False}}}
        return self.http.post("/task_runs/count", json=body).json()

    def states(self, run_id: str) -> list[dict]:
        """The run's state history, oldest first."""
        return self.http.get("/flow_run_states/", params={"flow_run_id": run_id}).json()


def wait_for(what: str, check, timeout: float, interval: float = 1.0, on_timeout=lambda: ""):
    """Poll `check()` until it returns something truthy (→ returned); fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{on_timeout()}")
        time.sleep(interval)


def wait_completed(api: Api, run_id: str, timeout: float, log=lambda: "") -> dict:
    """Wait for the run to be Completed → the run; fail at once if it ends any other way."""
    def done():
        run = api.run(run_id)
        if run["state"]["type"] in FINAL_BAD:
            pytest.fail(f"flow run {run_id} ended {run['state']['type']}: {run['state']['message']}\n{log()}")
        return run if run["state"]["type"] == "COMPLETED" else None

    return wait_for(f"flow run {run_id} to complete", done, timeout, on_timeout=log)


def tail(path: Path, n: int = 60) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""
