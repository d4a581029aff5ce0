"""The learning tests (`pytest -m learning`) at several training seeds and CPU kernel sets, and under each cut.

    python -m bench.learning_runs --seeds 0 1 2 --kernels default avx2      # the bars' table (docs/figures.md)
    python -m bench.learning_runs --cuts all                                # the recipe's cuts (docs/recipe.md)

(from the repository root: the tests' shared models live in tests/trained_models.py)
Each combination is one pytest process (tests/trained_models.py reads MUMU_TOY_SEED and MUMU_TOY_CUT; torch reads
ATEN_CPU_CAPABILITY, so `avx2` runs the AVX2 kernels on an AVX-512 machine), run one after the other: two torch
processes side by side on 2 cores time nothing. Prints a markdown table of every test's outcome, the figures it
printed and its time, and each combination's wall time. A cut runs only the tests whose claim it carries, which
must fail under it. Takes about as long as the learning tests once per combination (docs/figures.md says how long).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET  # noqa: S405  (our own pytest's junit report, never outside data)
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def start_tests(tests: list[str], seed: int, kernel: str, cut: str | None, report: Path) -> subprocess.Popen:
    env = {**os.environ, "MUMU_TOY_SEED": str(seed), "HF_HUB_OFFLINE": "1"}
    env.pop("ATEN_CPU_CAPABILITY", None)
    env.pop("MUMU_TOY_CUT", None)
    if kernel != "default":
        env["ATEN_CPU_CAPABILITY"] = kernel
    if cut:
        env["MUMU_TOY_CUT"] = cut
    selection = tests or ["-m", "learning"]
    return subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                             "-o", "junit_logging=system-out", *selection], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL)


def _cases(report: Path) -> list[dict]:
    if not report.exists():
        return []
    cases = []
    for case in ET.parse(report).getroot().iter("testcase"):  # noqa: S314
        outcome = "failed" if case.find("failure") is not None or case.find("error") is not None else (
            "skipped" if case.find("skipped") is not None else "passed")
        out = case.find("system-out")
        lines = (out.text or "").splitlines() if out is not None else []
        figures = " / ".join(line.strip() for line in lines if line.strip() and not line.startswith("---"))
        cases.append({"test": f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time", 0)), "figures": figures})
    return cases


def main(argv: list[str] | None = None) -> int:
    from tests.trained_models import CUTS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--kernels", nargs="+", default=["default"], help="default, avx2, avx512, ...")
    parser.add_argument("--cuts", nargs="*", default=[], help=f"'all' or some of: {', '.join(CUTS)}")
    parser.add_argument("--tests", nargs="*", default=[], help="pytest node ids (default: -m learning)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="combinations at once (the tests train on one torch thread; with 2 the figures are the "
                             "same, the wall times are not a measure)")
    args = parser.parse_args(argv)
    cuts = list(CUTS) if args.cuts == ["all"] else args.cuts
    unknown = [c for c in cuts if c not in CUTS]
    if unknown:
        parser.error(f"unknown cut(s) {unknown}: choose from {', '.join(CUTS)}")

    runs = [(seed, kernel, cut) for cut in (cuts or [None]) for seed in args.seeds for kernel in args.kernels]
    print("| seed | kernels | cut | test | outcome | figures | s |\n|---|---|---|---|---|---|---|")
    walls, pending, running = [], list(runs), []
    with tempfile.TemporaryDirectory() as tmp:
        while pending or running:
            while pending and len(running) < args.jobs:
                seed, kernel, cut = run = pending.pop(0)
                report = Path(tmp) / f"{len(walls) + len(running)}.xml"
                tests = list(CUTS[cut].tests) if cut else args.tests
                running.append((run, report, time.perf_counter(), start_tests(tests, seed, kernel, cut, report)))
            time.sleep(1)
            for entry in [e for e in running if e[3].poll() is not None]:
                running.remove(entry)
                (seed, kernel, cut), report, t0, _ = entry
                cases = _cases(report)
                walls.append((seed, kernel, cut, time.perf_counter() - t0, len(cases)))
                for c in cases:
                    print(f"| {seed} | {kernel} | {cut or '-'} | {c['test']} | {c['outcome']} | {c['figures']} | "
                          f"{c['seconds']:.0f} |", flush=True)
    print("\n| seed | kernels | cut | tests | wall s |\n|---|---|---|---|---|")
    for seed, kernel, cut, seconds, n in walls:
        print(f"| {seed} | {kernel} | {cut or '-'} | {n} | {seconds:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
