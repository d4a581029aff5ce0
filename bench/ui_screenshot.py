"""Screenshot of a flow run's page in the Prefect UI, with headless Chromium (Debian's `chromium` package).

    python bench/ui_screenshot.py                      # start a throw-away server, run build-data on the
                                                       # bundled samples (tiny), screenshot that run
    python bench/ui_screenshot.py --url http://127.0.0.1:4200 --flow-run-id ID   # a run on your server

Prints where the PNG is. The UI is a JavaScript app that fetches the run from the API after it loads, so
Chromium is given a virtual-time budget to let it render before the shot is taken.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deployments.local_server import local_server  # noqa: E402
from mumu import SAMPLES_DIR  # noqa: E402

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
]


def find_chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    sys.exit("ui_screenshot: no chromium on PATH (Debian: apt-get install -y chromium)")


def screenshot(url: str, png: Path, size=(1600, 1000), budget_ms: int = 20000) -> Path:
    """Load `url` in a fresh headless Chromium profile and save a PNG of the window."""
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mumu-chromium-") as profile:
        args = [find_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                f"--window-size={size[0]},{size[1]}", f"--virtual-time-budget={budget_ms}",
                f"--screenshot={png}", url]
        done = subprocess.run(args, capture_output=True, text=True, timeout=180)
    if not png.exists():
        sys.exit(f"ui_screenshot: chromium wrote no screenshot (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return png


def run_build_data(env: dict[str, str], out: Path) -> str:
    """Run the build-data flow on the bundled samples against the server in `env` → its flow run id."""
    subprocess.run([sys.executable, "-m", "mumu.cli", "build-data", "--input", str(SAMPLES_DIR), "--out", str(out)],
                   env=env, cwd=REPO, check=True)
    runs = httpx.post(f"{env['PREFECT_API_URL']}/flow_runs/filter",
                      json={"sort": "START_TIME_DESC", "limit": 1,
                            "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}).json()
    if not runs:
        sys.exit("ui_screenshot: the build-data run did not complete")
    return runs[0]["id"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", help="UI of a running server, e.g. http://127.0.0.1:4200 (default: start one)")
    p.add_argument("--flow-run-id", help="the run to show (with --url)")
    p.add_argument("--out", default="runs/ui/flow-run.png", help="where to write the PNG [runs/ui/flow-run.png]")
    p.add_argument("--wait-ms", type=int, default=20000, help="virtual-time budget for the page to render")
    args = p.parse_args(argv)
    png = Path(args.out).resolve()

    if args.url:
        if not args.flow_run_id:
            p.error("--url needs --flow-run-id")
        screenshot(f"{args.url.rstrip('/')}/runs/flow-run/{args.flow_run_id}", png, budget_ms=args.wait_ms)
    else:
        with tempfile.TemporaryDirectory(prefix="mumu-ui-") as tmp:
            with local_server(Path(tmp) / "home") as env:
                run_id = run_build_data(env, Path(tmp) / "data")
                ui = env["PREFECT_API_URL"].removesuffix("/api")
                time.sleep(1.0)  # let the run's last logs and artifacts land
                screenshot(f"{ui}/runs/flow-run/{run_id}", png, budget_ms=args.wait_ms)
                print(f"flow run {run_id} at {ui}/runs/flow-run/{run_id}")
    print(f"screenshot: {png} ({png.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
