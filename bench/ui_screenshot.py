"""Screenshot of a flow run's page in the Prefect UI, with headless Chromium (Debian's `chromium` package).

    python -m bench.ui_screenshot                      # start a throw-away server, run build-data on the
                                                       # bundled samples (tiny), screenshot that run
    python -m bench.ui_screenshot --url http://127.0.0.1:4200 --flow-run-id ID   # a run on your server

Prints where the PNG is. The browser part (flags, fresh profile, virtual-time budget so the JavaScript app
renders before the shot) is deployments/ui_check.py, which tests/test_deployments.py also uses.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]

from deployments.local_server import local_server  # noqa: E402
from deployments.ui_check import (  # noqa: E402
    DEFAULT_BUDGET_MS, INSTALL_HINT, ChromiumError, find_chromium, flow_run_url, screenshot,
)
from mumu import SAMPLES_DIR  # noqa: E402


def run_build_data(env: dict[str, str], out: Path) -> str:
    """Run the build-data flow on the bundled samples against the server in `env` → its flow run id."""
    subprocess.run([sys.executable, "-m", "mumu.cli", "build-data", "--input", str(SAMPLES_DIR), "--out", str(out)],
                   env=env, cwd=REPO, check=True)
    runs = httpx.post(f"{env['PREFECT_API_URL']}/flow_runs/filter",
                      json={"sort": "START_TIME_DESC", "limit": 1,  # top level: the run the CLI started
                            "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}},
                                          "parent_task_run_id": {"is_null_": True}}}).json()
    if not runs:
        sys.exit("ui_screenshot: the build-data run did not complete")
    return runs[0]["id"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="UI of a running server, e.g. http://127.0.0.1:4200 (default: start one)")
    p.add_argument("--flow-run-id", help="the run to show (with --url)")
    p.add_argument("--out", default="runs/ui/flow-run.png", help="where to write the PNG [runs/ui/flow-run.png]")
    p.add_argument("--wait-ms", type=int, default=DEFAULT_BUDGET_MS,
                   help=f"virtual-time budget for the page to render [{DEFAULT_BUDGET_MS}]")
    args = p.parse_args(argv)
    if args.url and not args.flow_run_id:
        p.error("--url needs --flow-run-id")
    if find_chromium() is None:  # said before a server and a flow run are started for nothing
        sys.exit(f"ui_screenshot: no chromium on PATH; {INSTALL_HINT}")
    png = Path(args.out).resolve()
    try:
        if args.url:
            screenshot(flow_run_url(args.url, args.flow_run_id), png, budget_ms=args.wait_ms)
        else:
            with tempfile.TemporaryDirectory(prefix="mumu-ui-") as tmp:
                with local_server(Path(tmp) / "home") as env:
                    run_id = run_build_data(env, Path(tmp) / "data")
                    url = flow_run_url(env["PREFECT_API_URL"].removesuffix("/api"), run_id)
                    time.sleep(1.0)  # let the run's last logs and artifacts land
                    screenshot(url, png, budget_ms=args.wait_ms)
                    print(f"flow run {run_id} at {url}")
    except ChromiumError as e:
        sys.exit(f"ui_screenshot: {e}")
    print(f"screenshot: {png} ({png.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
