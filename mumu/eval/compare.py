"""`mumu evaluate --compare RUN_A RUN_B`: two evaluations' paired differences, each with its bootstrap interval.

Each folder is an evaluation output (its report.json). Per benchmark both evaluated, over the items both scored
with the same prompt (same item id and text), each metric's per-item mean of A minus that of B, resampled over
those items (mumu/eval/bootstrap.py): an interval that excludes 0 says the difference is not the luck of the
prompts. FID is a statistic of a whole image set, not a per-item score, so it is listed unpaired, without an
interval. Differing protocols (sampler, steps, guidance, images per prompt, prompt form) are named above the
numbers: such a difference is not only the models'.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mumu.config.eval import BootstrapConfig
from mumu.errors import UserError
from mumu.eval.bootstrap import PairedDifference, paired_difference

METRICS = {"dino": "DINO", "clip_i": "CLIP-I", "clip_t": "CLIP-T", "subject_id": "Subject ID",
           "copy_paste": "Copy-paste"}
PROTOCOL_KEYS = ("sampler", "steps", "guidance_scale", "resolution", "samples_per_prompt", "prompt_mode",
                 "references", "eval_seed")


@dataclass(frozen=True)
class BenchmarkComparison:
    benchmark: str
    n_shared: int
    differences: dict[str, PairedDifference]  # metric key -> paired difference
    fid: tuple[float | None, float | None]  # (A, B), unpaired
    protocol_differences: list[str]


def load_scores(folder: str | Path) -> dict[str, dict]:
    """{benchmark: score} of an evaluation folder's report.json (one run per benchmark)."""
    path = Path(folder) / "report.json"
    if not Path(folder).is_dir():
        raise UserError(f"--compare {folder}: no such folder")
    try:
        scores = json.loads(path.read_text())["scores"]
    except FileNotFoundError:
        raise UserError(f"--compare {folder}: no report.json (not an evaluation output folder)") from None
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"--compare {folder}: unreadable report.json ({exc})") from None
    by_benchmark: dict[str, dict] = {}
    for score in scores:
        if score["benchmark"] in by_benchmark:
            raise UserError(f"--compare {folder}: report.json holds several runs of {score['benchmark']}; "
                            "compare folders of one run each")
        by_benchmark[score["benchmark"]] = score
    return by_benchmark


def _item_means(score: dict, metric: str) -> dict[tuple[str, str], float]:
    """{(item id, text): the item's mean of a per-image metric}, items without the metric left out."""
    return {(it["id"], it["text"]): float(np.mean(it[metric])) for it in score["items"] if it.get(metric)}


def _protocol_differences(a: dict, b: dict) -> list[str]:
    pa, pb = a.get("protocol") or {}, b.get("protocol") or {}
    return [f"{key} {pa.get(key)} vs {pb.get(key)}" for key in PROTOCOL_KEYS if pa.get(key) != pb.get(key)]


def compare_folders(folder_a: str | Path, folder_b: str | Path,
                    cfg: BootstrapConfig | None = None) -> list[BenchmarkComparison]:
    """Paired comparisons of every benchmark both folders evaluated (sorted by name)."""
    a, b = load_scores(folder_a), load_scores(folder_b)
    out = []
    for benchmark in sorted(set(a) & set(b)):
        shared = {(it["id"], it["text"]) for it in a[benchmark]["items"]} & \
                 {(it["id"], it["text"]) for it in b[benchmark]["items"]}
        if not shared:
            continue
        differences = {}
        for metric in METRICS:
            ma, mb = _item_means(a[benchmark], metric), _item_means(b[benchmark], metric)
            if set(ma) & set(mb):
                differences[metric] = paired_difference(ma, mb, cfg)
        out.append(BenchmarkComparison(benchmark, len(shared), differences,
                                       (a[benchmark].get("fid"), b[benchmark].get("fid")),
                                       _protocol_differences(a[benchmark], b[benchmark])))
    if not out:
        raise UserError(f"--compare: {folder_a} and {folder_b} share no scored item (benchmarks: "
                        f"{', '.join(sorted(a)) or 'none'} vs {', '.join(sorted(b)) or 'none'})")
    return out


def format_comparison(comparisons: list[BenchmarkComparison], name_a: str, name_b: str,
                      level: float = 0.95) -> str:
    """The comparison as printed: one block per benchmark, one line per metric."""
    lines = [f"A = {name_a}, B = {name_b}; A - B over shared items, {level:.0%} bootstrap interval over items"]
    for c in comparisons:
        lines += ["", f"{c.benchmark}: {c.n_shared} shared items"]
        if c.protocol_differences:
            lines.append("  protocols differ: " + "; ".join(c.protocol_differences))
        for metric, d in c.differences.items():
            ci = "n/a (one item)" if d.interval is None else f"[{d.interval[0]:+.4f}, {d.interval[1]:+.4f}]"
            mark = "" if d.interval is None or d.interval[0] <= 0 <= d.interval[1] else "  *"
            lines.append(f"  {METRICS[metric]:<11} A {d.mean_a:.4f}  B {d.mean_b:.4f}  A-B {d.difference:+.4f} "
                         f"{ci}{mark}")
        fa, fb = c.fid
        if fa is not None or fb is not None:
            fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
            lines.append(f"  {'FID':<11} A {fmt(fa)}  B {fmt(fb)}  (a set statistic: not paired, no interval)")
    lines += ["", "* the interval excludes 0"]
    return "\n".join(lines)
