"""What the tests against a real Prefect server share: a small REST client and polling with a clear failure.

A local server on SQLite can stall for tens of seconds while it waits on its database lock (a known limit of
Prefect on SQLite; its busy timeout is 60 s), more so on a loaded 2-core CI machine. A poll that gets no answer
is therefore "not yet", not a failure: only the poll's own deadline fails a test, with the stalls it saw.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

FINAL_BAD = ("FAILED", "CRASHED", "CANCELLED")


class Api:
    """The few REST calls the server tests make (the server's API at PREFECT_API_URL)."""

    def __init__(self, env: dict[str, str]):
        # 65 s: longer than the server's SQLite busy timeout, so a request waiting on the lock is answered.
        self.http = httpx.Client(base_url=env["PREFECT_API_URL"], timeout=65)

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
    """Poll `check()` until it returns something truthy (→ returned); fail the test after `timeout` s.

    A poll the server does not answer (timeout, dropped connection) counts as "not yet"; the failure
    message lists such unanswered polls and any poll that took over 5 s."""
    deadline = time.monotonic() + timeout
    stalls: list[str] = []
    while True:
        asked = time.monotonic()
        try:
            got = check()
        except httpx.TransportError as e:
            got = None
            stalls.append(f"no answer after {time.monotonic() - asked:.0f} s ({type(e).__name__})")
        else:
            if time.monotonic() - asked > 5:
                stalls.append(f"answered after {time.monotonic() - asked:.0f} s")
        if got:
            if stalls:  # shown with the test's output when a later step fails
                print(f"while waiting for {what}, server stalls: {'; '.join(stalls)}", flush=True)
            return got
        if time.monotonic() > deadline:
            seen = f"server stalls seen: {'; '.join(stalls)}\n" if stalls else ""
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{seen}{on_timeout()}")
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
