"""Headless Chromium (Debian's `chromium` package; no downloaded browser builds) on a Prefect UI page:
a PNG screenshot, or the DOM as the JavaScript app rendered it, for tests to assert on.

The UI is a single-page app that fetches the flow run from the API after it loads, so Chromium is given
a virtual-time budget: it runs the page's timers on a virtual clock, which stands still while network
fetches are pending, and takes the shot / dumps the DOM once that much virtual time has passed. That makes
the budget independent of how busy the machine is. Measured on 2 shared cores (load 6, Prefect 3.8.8's
UI): a flow run page shows its whole header (name, state, task-run count, flow) from 60-100 ms of virtual
time, also with both cores busy. DEFAULT_BUDGET_MS leaves 30x margin over that and stays below the page's
5 s refresh interval (more only re-fetches the run and costs wall time: a 30 s budget took ~9 s of wall
time, 3 s takes ~4-6 s, nearly all of it Chromium starting and the app's JavaScript running).

`--run-all-compositor-stages-before-draw` makes the screenshot show the page as it finally is: without it,
about 1 shot in 8 caught the router's 0.25 s fade-in at its start (the page dimmed nearly to black), with
budgets from 0.2 to 3 s alike; with it, repeated shots of a page came out pixel-identical.
"""

from __future__ import annotations

import html.parser
import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

# Headless, no sandbox (CI runs as root, where Chromium will not start sandboxed), nothing that reaches
# out to Google's services (the page under test is the only network traffic), and screenshots of
# finished frames only (see above).
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
    "--run-all-compositor-stages-before-draw",
)
DEFAULT_BUDGET_MS = 3_000
DEFAULT_SIZE = (1600, 1000)
INSTALL_HINT = "install Debian's chromium: `make browser` (apt-get install -y chromium)"


class ChromiumError(RuntimeError):
    """Chromium is missing, or it ran but produced no screenshot / DOM."""


def find_chromium() -> str | None:
    """Path of Debian's `chromium` (or `chromium-browser`) on PATH, or None."""
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    return None


def flow_run_url(ui_url: str, flow_run_id: str) -> str:
    """The UI's page of one flow run (route `runs/flow-run/:flowRunId` of the Prefect 3 UI)."""
    return f"{ui_url.rstrip('/')}/runs/flow-run/{flow_run_id}"


def _run(url: str, actions: list[str], size: tuple[int, int], budget_ms: int, timeout: float) -> tuple[int, str, str]:
    chromium = find_chromium()
    if chromium is None:
        raise ChromiumError(f"no chromium on PATH: {INSTALL_HINT}")
    if budget_ms <= 0:  # 0 never fires: Chromium then waits for ever
        raise ValueError(f"budget_ms must be > 0, got {budget_ms}")
    # A fresh profile per call: nothing from an earlier load (cache, service workers) can show through.
    with tempfile.TemporaryDirectory(prefix="mumu-chromium-") as profile:
        args = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
                f"--virtual-time-budget={budget_ms}", *actions, url]
        # Its own process group, so a hung browser is stopped with all its helper processes (and only those).
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise ChromiumError(f"chromium did not finish {url} within {timeout:.0f} s") from None
    return proc.returncode, out, err


def screenshot(url: str, png: str | Path, size: tuple[int, int] = DEFAULT_SIZE,
               budget_ms: int = DEFAULT_BUDGET_MS, timeout: float = 180) -> Path:
    """Load `url` in a fresh headless Chromium and save a PNG of the `size` window → its path."""
    png = _prepare(png)
    code, _, err = _run(url, [f"--screenshot={png}"], size, budget_ms, timeout)
    _check_png(png, url, code, err)
    return png


def dump_dom(url: str, size: tuple[int, int] = DEFAULT_SIZE, budget_ms: int = DEFAULT_BUDGET_MS,
             timeout: float = 180, screenshot_to: str | Path | None = None) -> str:
    """Load `url` in a fresh headless Chromium → the serialized DOM after `budget_ms` of virtual time.
    With `screenshot_to`, also save a PNG of that same page load there (one browser start for both)."""
    actions = ["--dump-dom"]
    if screenshot_to is not None:
        screenshot_to = _prepare(screenshot_to)
        actions.append(f"--screenshot={screenshot_to}")
    code, out, err = _run(url, actions, size, budget_ms, timeout)
    if code != 0 or "<html" not in out:
        raise ChromiumError(f"chromium dumped no DOM of {url} (exit {code}):\n{err[-2000:]}")
    if screenshot_to is not None:
        _check_png(screenshot_to, url, code, err)
    return out


def _prepare(png: str | Path) -> Path:
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)  # a stale file must not pass for this load's shot
    return png


def _check_png(png: Path, url: str, code: int, err: str) -> None:
    if not png.exists() or png.stat().st_size == 0:
        raise ChromiumError(f"chromium wrote no screenshot of {url} (exit {code}):\n{err[-2000:]}")


class _Text(html.parser.HTMLParser):
    HIDDEN = frozenset({"script", "style", "title", "noscript"})

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0  # depth inside elements whose text is not shown

    def handle_starttag(self, tag, attrs):
        if tag in self.HIDDEN:
            self._skip += 1

    def handle_endtag(self, tag):
        if tag in self.HIDDEN and self._skip:
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def page_text(dom: str) -> str:
    """The text a reader sees in a dumped DOM (no scripts, styles or <title>), whitespace collapsed to
    single spaces, e.g. "... visionary-bittern Completed 2026/11/22 02:25:48 AM 17s 2 Task runs Flow build-data ..."."""
    parser = _Text()
    parser.feed(dom)
    parser.close()
    return re.sub(r"\s+", " ", " ".join(parser.parts)).strip()
