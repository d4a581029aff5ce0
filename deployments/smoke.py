"""Smoke test of the whole event chain on a throw-away local server: files land → watch-inputs → every stage of
mumu/stage_list.py, each started by its upstream's completion event, every run on a process worker, tiny profile.

    python -m deployments.smoke [--keep DIR] [--database-url postgresql+asyncpg://USER@HOST:PORT/DB]

Starts `prefect server start` in a temporary PREFECT_HOME on a free port, creates the pool and the gpu
queue (limit 1), `prefect deploy --all` from this checkout, pauses the schedules, starts one worker on
both queues, copies a few bundled samples into an inbox and runs the watcher deployment on it; then
prints each run as it changes state until the last stage finishes. Takes ~5 minutes on 2 CPU cores.
Stops the worker and the server it started, whatever happens. `--database-url` runs that server on the
given database (an empty one) instead of SQLite in the temporary PREFECT_HOME.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
from sqlalchemy.engine import make_url

from deployments.local_server import local_server, prefect_cli, worker
from mumu import SAMPLES_DIR
from mumu.stage_list import STAGES

REPO = Path(__file__).resolve().parents[1]
POOL = "mumu-process"
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def _runs(http: httpx.Client) -> list[tuple[str, dict]]:
    flows = {f["id"]: f["name"] for f in http.post("/flows/filter", json={}).json()}
    runs = http.post("/flow_runs/filter", json={"sort": "EXPECTED_START_TIME_ASC"}).json()
    return [(flows[r["flow_id"]], r) for r in runs]


def chain(work: Path, images: int = 4, timeout: float = 1500, database_url: str | None = None) -> bool:
    """Run the chain under `work` → True when its last stage completed."""
    started = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f} s] {msg}", flush=True)

    inbox, run_root = work / "inbox", work / "run"
    inbox.mkdir(parents=True)
    for p in sorted(SAMPLES_DIR.glob("*.png"))[:images]:
        shutil.copy(p, inbox / p.name)
    database = {"PREFECT_API_DATABASE_CONNECTION_URL": database_url} if database_url else {}
    with local_server(work / "prefect-home", extra_env=database) as env:
        shown_db = make_url(database_url).render_as_string(hide_password=True) if database_url else "SQLite"
        say(f"server at {env['PREFECT_API_URL'].removesuffix('/api')}, database: {shown_db}")
        prefect_cli(["work-pool", "create", POOL, "--type", "process"], env)
        prefect_cli(["work-queue", "create", "gpu", "--pool", POOL, "--limit", "1"], env)
        prefect_cli(["--no-prompt", "deploy", "--all"], env, cwd=REPO, timeout=600)
        prefect_cli(["deployment", "schedule", "pause", "--all"], env)
        say("deployed; schedules paused")
        http = httpx.Client(base_url=env["PREFECT_API_URL"], timeout=30)
        with worker(POOL, {**env, "PREFECT_WORKER_QUERY_SECONDS": "1"}, cwd=work, log_path=work / "worker.log"):
            prefect_cli(["deployment", "run", "watch-inputs/inbox", "--param", f"input_dir={inbox}",
                         "--param", f"out={run_root}", "--param", "settle_seconds=0"], env)
            say(f"watch-inputs/inbox run on {inbox}")
            seen: dict[str, str] = {}
            while time.monotonic() - started < timeout:
                runs = _runs(http)
                for flow, run in runs:
                    state = run["state"]["type"]
                    if seen.get(run["id"]) != state:
                        seen[run["id"]] = state
                        # A subflow's parameters are whole configs and benchmark lists, too long for a line.
                        shown = json.dumps(run["parameters"]) if run["deployment_id"] else "(subflow)"
                        say(f"{flow:18s} {run['name']:24s} {state:10s} {shown}")
                by_flow = {flow: run for flow, run in runs}
                if any(run["state"]["type"] in FINAL[1:] for _, run in runs):
                    say(f"a run did not complete: see {work / 'worker.log'}")
                    return False
                last = STAGES[-1]
                if last.name in by_flow and by_flow[last.name]["state"]["type"] == "COMPLETED":
                    say(f"chain complete: {last.name} wrote {run_root / last.folder}")
                    return True
                time.sleep(2)
            say("timed out")
            return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keep", help="work folder to keep (default: a temporary one, removed)")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--database-url", help="the server's database, e.g. postgresql+asyncpg://prefect@127.0.0.1:5432/"
                                          "prefect (default: SQLite in the temporary PREFECT_HOME)")
    args = p.parse_args(argv)
    if args.keep:
        ok = chain(Path(args.keep).resolve(), args.images, database_url=args.database_url)
    else:
        with tempfile.TemporaryDirectory(prefix="mumu-smoke-") as tmp:
            ok = chain(Path(tmp), args.images, database_url=args.database_url)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
