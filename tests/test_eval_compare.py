"""`mumu evaluate --compare RUN_A RUN_B`: paired differences over shared items, and one-line errors."""

import json
import re

import numpy as np
import pytest

from mumu.cli import main
from mumu.config import load_profile
from mumu.eval.bootstrap import paired_difference
from mumu.eval.compare import compare_folders
from mumu.eval.runner import evaluate
from tests.eval_fakes import CountingGenerator, PixelEncoders
from tests.test_eval_runner import make_bench


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The same benchmark evaluated by a generator that draws the prompt's subject and one that swaps colours."""
    tmp = tmp_path_factory.mktemp("compare")
    root = make_bench(tmp / "bench")
    cfg = load_profile("tiny", {"eval.benchmark.root": str(root), "eval.benchmark.multi_sizes": [2],
                                "eval.samples_per_prompt": 2, "eval.chunk_size": 4}).eval
    evaluate(CountingGenerator(noise=10), tmp / "good", PixelEncoders(), cfg, run="good")
    evaluate(CountingGenerator(noise=10, wrong_subject=True), tmp / "bad", PixelEncoders(), cfg, run="bad")
    return tmp


def test_compare_prints_paired_differences_with_intervals(two_runs, capsys):
    assert main(["evaluate", "--compare", str(two_runs / "good"), str(two_runs / "bad")]) == 0
    out = capsys.readouterr().out
    good = {s["benchmark"]: s for s in json.loads((two_runs / "good" / "report.json").read_text())["scores"]}
    bad = {s["benchmark"]: s for s in json.loads((two_runs / "bad" / "report.json").read_text())["scores"]}
    assert "bench-single: 6 shared items" in out and "bench-multi:" in out
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("DINO") and "A-B" in ln)
    a, b, diff, low, high = map(float, re.findall(r"[-+]?\d+\.\d+", line))
    # independent: the per-item means of each report, differenced item by item
    per_item = lambda s: {it["id"]: float(np.mean(it["dino"])) for it in s["items"]}  # noqa: E731
    ga, ba = per_item(good["bench-multi"]), per_item(bad["bench-multi"])
    assert diff == pytest.approx(np.mean([ga[k] - ba[k] for k in ga]), abs=1e-4)
    assert a == pytest.approx(np.mean(list(ga.values())), abs=1e-4)
    assert b == pytest.approx(np.mean(list(ba.values())), abs=1e-4)
    assert low <= diff <= high
    single = compare_folders(two_runs / "good", two_runs / "bad")
    dino = next(c for c in single if c.benchmark == "bench-single").differences["dino"]
    assert dino.difference > 0.1 and dino.interval[0] > 0  # the good generator wins beyond the prompts' luck
    assert dino.interval == paired_difference(per_item(good["bench-single"]), per_item(bad["bench-single"])).interval
    assert "FID" in out and "not paired" in out


def test_a_run_against_itself_differs_by_zero(two_runs):
    for comparison in compare_folders(two_runs / "good", two_runs / "good"):
        assert comparison.protocol_differences == []
        for d in comparison.differences.values():
            assert d.difference == 0 and d.interval in (None, (0.0, 0.0))


def test_compare_names_differing_protocols(two_runs, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    report = json.loads((two_runs / "bad" / "report.json").read_text())
    for score in report["scores"]:
        score["protocol"]["steps"] = 50
    (other / "report.json").write_text(json.dumps(report))
    comparisons = compare_folders(two_runs / "good", other)
    assert all(c.protocol_differences == ["steps 20 vs 50"] for c in comparisons)


@pytest.mark.parametrize("make_b, needle", [
    (lambda tmp: tmp / "missing", "no such folder"),
    (lambda tmp: tmp, "no report.json"),
    (lambda tmp: _other_benchmark(tmp), "share no scored item"),
])
def test_bad_compare_inputs_give_one_line_and_exit_2(two_runs, tmp_path, capsys, make_b, needle):
    assert main(["evaluate", "--compare", str(two_runs / "good"), str(make_b(tmp_path))]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("mumu: error:") and needle in err[0], err


def _other_benchmark(tmp):
    folder = tmp / "other-bench"
    folder.mkdir()
    (folder / "report.json").write_text(json.dumps({"rows": [], "scores": [
        {"benchmark": "toy-single", "items": [{"id": "x", "text": "a cat", "dino": [0.5]}]}]}))
    return folder


def test_evaluate_without_checkpoint_or_compare_is_one_line(tmp_path, capsys):
    assert main(["evaluate", "--out", str(tmp_path / "o")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "--checkpoint and --out" in err[0]
