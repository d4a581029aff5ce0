"""build-data throughput: the Prefect flow vs the bare model calls it wraps, in one process.

    python -m bench.bench_build_data [--images 768] [--repeats 5] [--variants ...] [--shards-per-task N]

Prints images/s of the bare model calls (captioner on the uncaptioned images, detector on all, segmenter on the
boxes; per shard, as the flow calls them), and of the variants chosen, each lever on its own (all warm: API
started, models in the task cache):
  stages-png6    the stage functions in one thread (stages.run_local), PNGs at Pillow's default zlib level 6
  stages         the same at the profile's level (1 in tiny)
  stages+wb      stages, each shard written on a background thread while the next goes through the models
                 (runtime.write_behind)
  stages+wb+ra   stages+wb, and the next shard ingested on the same thread (runtime.read_ahead)
  stages+wb+ra+proc  the same on a process of its own (runtime.shard_io: process)
  per-shard      one build-shard-group run per shard (runtime.shards_per_task=1)
  grouped-png6   the profile's runtime.shards_per_task shards per run (at least as many runs as run at once), PNG level 6
  grouped        the same at the profile's PNG level
  grouped+wb     grouped, with runtime.write_behind
  grouped+wb+ra  grouped+wb, with runtime.read_ahead
  grouped+wb+ra+proc  grouped+wb+ra on a process of its own (runtime.shard_io: process): the flow as tiny runs it
Every variant sets runtime.write_behind, read_ahead and shard_io itself (off unless "+wb" / "+ra", a thread
unless "+proc"), whatever the profile says. NAME@N: NAME at runtime.shards_per_task=N. Each variant is timed right after a bare run, and its ratio is the median over the repeats of those pairs
(the machine's speed drifts within a minute; a best-of per side can pair a fast minute's bare run with a slow
one's flow). Then the flow's fixed cost, shard-write MB/s against a raw tarfile write of the same member bytes,
and peak RSS.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import statistics
import tarfile
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

import torch  # noqa: E402

from mumu import SAMPLES_DIR  # noqa: E402
from mumu.config import load_profile  # noqa: E402
from mumu.data import stages  # noqa: E402
from mumu.data.scenes import render_scene  # noqa: E402
from mumu.data.shards import sample_members  # noqa: E402

EMOJI_DIR = SAMPLES_DIR.parent / "emoji"


def make_inputs(folder: Path, n: int) -> None:
    """The bundled scenes (3 uncaptioned) plus rendered ones until there are n images."""
    folder.mkdir(parents=True)
    captions = [json.loads(line) for line in (SAMPLES_DIR / "captions.jsonl").read_text().splitlines() if line]
    for p in sorted(SAMPLES_DIR.glob("*.png"))[:n]:
        shutil.copy(p, folder / p.name)
    rows = [c for c in captions if (folder / c["image"]).exists()]
    for i in range(len(list(folder.glob("*.png"))), n):
        scene = render_scene(EMOJI_DIR, seed=10_000 + i)
        scene.image.save(folder / f"extra_{i:04d}.png")
        rows.append({"image": f"extra_{i:04d}.png", "caption": scene.caption})
    (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def load_models(cfg):
    from models.captioner import Captioner
    from models.detector import Detector
    from models.segmenter import Segmenter

    data = cfg.data
    return (Captioner.from_config(data.caption, "cpu"), Detector.from_config(data.detect, "cpu"),
            Segmenter.from_config(data.segment, "cpu"))


def stages_seconds(inputs: Path, out: Path, cfg, models) -> float:
    """Every stage as plain function calls (mumu.data.stages.run_local), no Prefect: the data code's own cost."""
    start = time.perf_counter()
    stages.run_local(inputs, out, cfg.data, *models, "bench", cfg.runtime.write_behind, cfg.runtime.read_ahead,
                     cfg.runtime.shard_io)
    return time.perf_counter() - start


def bare_model_seconds(inputs: Path, cfg, models) -> float:
    """The model calls alone: what the flow wraps. Inputs are decoded and phrased outside the timer."""
    data = cfg.data
    captioner, detector, segmenter = models
    works = [stages.find_entities(stages.caption(stages.ingest(s, data.ingest), captioner), data.entities)
             for s in stages.plan_shards(inputs, data.ingest)]
    start = time.perf_counter()
    for work in works:
        images = [it.image for it in work.items]
        uncaptioned = [it.image for it in work.items if it.caption_source == "vlm"]
        if uncaptioned:
            captioner.caption(uncaptioned)
        detections = detector.detect(images, [[e.phrase for e in it.entities] for it in work.items])
        segmenter.segment(images, [[d.box for d in dets] for dets in detections])
    return time.perf_counter() - start


def flow_seconds(inputs: Path, out: Path, overrides: dict) -> float:
    """The build-data flow on a warm process (API started, models in the task cache, as the bare side has them),
    as a subflow, the way `mumu pipeline` runs it: a top-level run ends only when its heartbeat thread wakes from
    its 1 s sleep, which rounds every timing up to the next whole second."""
    return _timed_build_data(str(inputs), str(out), overrides)


def _timed_build_data(inputs: str, out: str, overrides: dict) -> float:
    from prefect import flow

    import flows.build_data as fb

    @flow(name="bench-build-data")
    def parent(inputs: str, out: str, overrides: dict) -> float:
        start = time.perf_counter()
        fb.build_data(input_path=inputs, out=out, profile="tiny", overrides=overrides)
        return time.perf_counter() - start

    return parent(inputs, out, overrides)


def write_rates(inputs: Path, out: Path, cfg) -> tuple[float, float]:
    """MB/s of stages.write vs tarfile writing the same (already encoded) member bytes."""
    data = cfg.data
    shard = stages.plan_shards(inputs, data.ingest)[0]
    work = stages.compose(stages.ingest(shard, data.ingest), data.compose)  # no entities: still every member kind
    start = time.perf_counter()
    report = stages.write(work, out, data)
    ours = report.bytes / (time.perf_counter() - start) / 1e6
    start = time.perf_counter()
    members = [(it.composed.record.key, sample_members(it.composed, data.write)) for it in work.items]
    encode_seconds = time.perf_counter() - start
    start = time.perf_counter()
    with tarfile.open(out / "raw.tar", "w") as tar:
        for key, files in members:
            for name, payload in files.items():
                info = tarfile.TarInfo(f"{key}.{name}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    raw_bytes = (out / "raw.tar").stat().st_size
    raw_seconds = time.perf_counter() - start
    tar_only = report.bytes / max(report.bytes / (ours * 1e6) - encode_seconds, 1e-9) / 1e6
    return ours, tar_only, raw_bytes / raw_seconds / 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=768)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (both sides)")
    parser.add_argument("--images-per-shard", type=int, default=None,
                        help="override data.ingest.images_per_shard (default: the tiny profile's)")
    parser.add_argument("--shards-per-task", type=int, default=None,
                        help="override runtime.shards_per_task (default: the tiny profile's)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, type=_variant,
                        help="what to time against the bare model calls, among " + ", ".join(VARIANTS) + "; NAME@N "
                             "runs NAME at runtime.shards_per_task=N (default: %(default)s)")
    args = parser.parse_args()
    base = {"data.ingest.images_per_shard": args.images_per_shard} if args.images_per_shard else {}
    if args.shards_per_task:
        base["runtime.shards_per_task"] = args.shards_per_task
    base["runtime.write_behind"] = base["runtime.read_ahead"] = False
    base["runtime.shard_io"] = "thread"
    cfg = load_profile("tiny", base)
    torch.set_num_threads(args.threads)
    chosen = {}
    for name in args.variants:
        kind, overrides = VARIANTS[name.split("@")[0]](base)
        if "@" in name:
            overrides = {**overrides, "runtime.shards_per_task": int(name.split("@")[1])}
        chosen[name] = (kind, overrides)
    ratios: dict[str, list[float]] = {name: [] for name in chosen}
    seconds: dict[str, list[float]] = {name: [] for name in ["bare", *chosen]}
    n = args.images
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_inputs(tmp / "in", n)
        models = load_models(cfg)
        make_inputs(tmp / "warm-in", 4)
        for name, (kind, overrides) in chosen.items():  # warm: API, models, each flow's first run, the I/O process
            if kind == "stages":
                stages_seconds(tmp / "warm-in", tmp / f"warm-{name}", load_profile("tiny", overrides), models)
            else:
                flow_seconds(tmp / "warm-in", tmp / f"warm-{name}", overrides)
        for r in range(args.repeats):
            for name, (kind, overrides) in chosen.items():
                # Each variant right after its own bare run: the machine's speed drifts by up to a third within a
                # minute (bare calls 5.9-8.2 s in one process), so only back-to-back pairs are comparable.
                bare = bare_model_seconds(tmp / "in", cfg, models)
                out = tmp / f"{name}-{r}"
                took = (stages_seconds(tmp / "in", out, load_profile("tiny", overrides), models) if kind == "stages"
                        else flow_seconds(tmp / "in", out, overrides))
                ratios[name].append(bare / took)
                seconds["bare"].append(bare)
                seconds[name].append(took)
        # The flow's fixed cost: a re-run with every shard finished (its flow runs, plan, manifest, artifact, event).
        flowed = [name for name in chosen if chosen[name][0] == "flow"]
        fixed = min(flow_seconds(tmp / "in", tmp / f"{flowed[0]}-0", chosen[flowed[0]][1]) for _ in range(3)) \
            if flowed else 0.0
        ours, tar_only, raw = write_rates(tmp / "in", tmp / "write", cfg)
    per_shard = cfg.data.ingest.images_per_shard
    print(f"{n} images, {per_shard} images per shard, {args.repeats} repeats; load average {os.getloadavg()[0]:.1f}")
    print(f"  bare model calls: median {statistics.median(seconds['bare']):.2f} s "
          f"({min(seconds['bare']):.2f}-{max(seconds['bare']):.2f})")
    for name, rs in ratios.items():
        took = statistics.median(seconds[name])
        print(f"  {name:14s} {n / took:8.2f} images/s (median {took:.2f} s)  {statistics.median(rs):.2f}x the bare "
              f"model calls (median of pairs; {min(rs):.2f}-{max(rs):.2f})")
    if flowed:
        print(f"the flow's fixed cost (a re-run with every shard done): {fixed:.2f} s; target for the profile's flow "
              f"(grouped+wb+ra+proc): >= 0.8x")
    print(f"shard write: {ours:.1f} MB/s including PNG encoding; {tar_only:.1f} MB/s without it, vs a raw "
          f"tarfile write of the same bytes {raw:.1f} MB/s (ratio {tar_only / raw:.2f})")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


def _variants() -> dict:
    """name → (base overrides → ("stages" | "flow", overrides))."""
    def stages_(**extra):
        return lambda base: ("stages", {**base, **extra})

    def flow_(**extra):
        return lambda base: ("flow", {**base, **extra})

    wb, ra, png6 = "runtime.write_behind", "runtime.read_ahead", "data.write.png_compress_level"
    proc = {wb: True, ra: True, "runtime.shard_io": "process"}
    return {
        "stages-png6": stages_(**{png6: 6}), "stages": stages_(), "stages+wb": stages_(**{wb: True}),
        "stages+wb+ra": stages_(**{wb: True, ra: True}), "stages+wb+ra+proc": stages_(**proc),
        "per-shard": flow_(**{"runtime.shards_per_task": 1}),
        "grouped-png6": flow_(**{png6: 6}), "grouped": flow_(), "grouped+wb": flow_(**{wb: True}),
        "grouped+wb+ra": flow_(**{wb: True, ra: True}), "grouped+wb+ra+proc": flow_(**proc),
    }


VARIANTS = _variants()


def _variant(name: str) -> str:
    base, _, per_task = name.partition("@")
    if base not in VARIANTS or (per_task and not per_task.isdigit()):
        raise argparse.ArgumentTypeError(f"unknown variant {name!r}")
    return name


DEFAULT_VARIANTS = ["stages+wb+ra", "stages+wb+ra+proc", "grouped+wb+ra", "grouped+wb+ra+proc"]


if __name__ == "__main__":
    main()
