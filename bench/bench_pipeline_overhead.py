"""Orchestration overhead of the tiny end-to-end run: `mumu pipeline` vs the same stage functions called directly.

    python -m bench.bench_pipeline_overhead [--repeats 2] [--set key=value ...]

One process, tiny profile, the bundled samples (mumu/samples/scenes), a fresh output folder per run:
  - direct:  the plain functions the flows' tasks call, stage after stage: mumu.data.stages.run_local
             (build-data), mumu.train.feature_stage's plan / cache_shard / manifest (cache-features; its
             shards on the pool), mumu.train.loop.train for pretrain then tune (the arguments tasks/train.py
             passes), then evaluate as tasks/evaluate.py + flows/evaluate.py do it: per benchmark,
             runner.generate_chunk over the chunks (batched sampler) and runner.score; runner.write_report;
  - prefect: flows.pipeline.pipeline(...) (build-data → cache-features → pretrain → tune → evaluate subflows);
  - direct, threads: the direct path with the flow's schedule: shards (stages.run_shard) and generation
             chunks mapped on a thread pool of the size the thread task runner uses (flows/runners.py),
             as build-data and evaluate map them on their task runner. prefect vs this one is Prefect's own
             cost; prefect vs plain direct also counts what that concurrency gains or loses.
The ephemeral API's start-up is excluded (a trivial flow runs first); every path is warmed once with a
short run (imports, tokenizers, the data models and evaluation encoders, which all paths take from
tasks.model_cache.cached_model's per-process cache), then repeats are interleaved and minima reported (per
stage and for the total separately, so stage minima need not add up to the total's).
Per stage, the pipeline's wall time is split at its subflows' end times (read back from the API).
Checks that every path did the same work: manifest counts, every training loss, the report's scores.
Prefect's logging level is left at its default (INFO), as a `mumu pipeline` user has it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from mumu import SAMPLES_DIR
from mumu.config import config_hash, load_profile

STAGES = ("build-data", "cache-features", "pretrain", "tune", "evaluate")
# The warm-up run: every code path once, at a fraction of the cost.
WARM = {"train.pretrain.max_steps": 2, "train.tune.max_steps": 2, "eval.samples_per_prompt": 1,
        "eval.sampler.steps": 2, "eval.benchmark.max_subjects": 2, "eval.benchmark.max_templates": 1,
        "eval.benchmark.multi_combinations": 1}
log = logging.getLogger("bench.direct")


def run_direct(out: Path, overrides: dict, threads: int = 1) -> dict[str, float]:
    """The four stages as plain function calls (shards and chunks on `threads` threads); seconds per stage."""
    from concurrent.futures import ThreadPoolExecutor

    from models.captioner import Captioner
    from models.detector import Detector
    from models.eval_encoders import EvalEncoders
    from models.segmenter import Segmenter
    from mumu.data import stages
    from mumu.data.shards import shard_urls
    from mumu.eval import runner
    from mumu.eval.benchmarks import build_benchmarks
    from mumu.eval.items import chunk
    from mumu.generate import MumuSampler
    from mumu.runs import model_dir
    from mumu.train import feature_stage
    from mumu.train.loop import train
    from tasks.model_cache import cached_model
    from tasks.placement import worker_device

    cfg = load_profile("tiny", overrides)
    data, ev = cfg.data, cfg.eval
    dev = worker_device(cfg.runtime)  # also applies runtime.torch_threads, as every task does
    times, t0 = {}, time.perf_counter()

    def lap(stage):
        nonlocal t0
        times[stage], t0 = time.perf_counter() - t0, time.perf_counter()

    models = [cached_model(kind, c, dev, lambda cls=cls, c=c: cls.from_config(c, dev)) for kind, cls, c in
              (("captioner", Captioner, data.caption), ("detector", Detector, data.detect),
               ("segmenter", Segmenter, data.segment))]
    pool = ThreadPoolExecutor(threads)
    if threads == 1:
        stages.run_local(SAMPLES_DIR, out / "data", data, *models, config_hash(data))
    else:  # what build-data does: plan, the shards' stages mapped on the pool, the manifest
        shards = stages.plan_shards(SAMPLES_DIR, data.ingest)
        reports = list(pool.map(lambda s: stages.run_shard(s, out / "data", data, *models), shards))
        stages.write_manifest(out / "data", reports, config_hash(data))
    lap("build-data")

    plan = feature_stage.plan_cache(out / "data", cfg.model, cfg.train)
    parts = cached_model("frozen-parts", f"{cfg.model.model_dump_json()}|{plan.key}", dev,
                         lambda: feature_stage.FrozenParts(cfg.model, plan.spec, dev))
    sidecars = list(pool.map(lambda s: feature_stage.cache_shard(plan, s, parts, cfg.train.features.batch_size),
                             plan.shards))
    feature_stage.write_cache_manifest(plan, sidecars)
    lap("cache-features")

    def on_log(step, m):  # what train_stage logs, to a logger that is not sent anywhere
        log.info("step %d: loss %.4f (diffusion %.4f, attn %.4f)", step, m["loss"], m["diffusion"], m["attn"])

    for stage in ("pretrain", "tune"):
        init = str(model_dir(out / "pretrain")) if stage == "tune" else None
        train(stage, cfg, shard_urls(out / "data"), out / stage, init=init, resume=True, on_log=on_log)
        lap(stage)

    model = str(model_dir(out / "tune"))
    sampler = MumuSampler.from_checkpoint(model, ev.sampler, dev)  # a new checkpoint: loaded, as the task does
    encoders = cached_model("eval-encoders", f"{ev.dino.model_dump_json()}|{ev.clip.model_dump_json()}", dev,
                            lambda: EvalEncoders.from_config(ev, dev))
    scores = []
    for bench in build_benchmarks(ev.benchmark):
        bench_dir = out / "eval" / bench.name
        list(pool.map(lambda ic, d=bench_dir: runner.generate_chunk(ic[1], sampler.generate, d, ic[0], ev,
                                                                   generate_batch_fn=sampler.generate_batch),
                      enumerate(chunk(bench.items, ev.chunk_size))))
        scores.append(runner.score(bench, bench_dir, encoders, ev))
    runner.write_report(scores, out / "eval", ev.report, run="tune")
    lap("evaluate")
    pool.shutdown()
    return times


def run_prefect(out: Path, overrides: dict) -> dict[str, float]:
    """flows.pipeline.pipeline; its wall time split per stage at the subflows' end times."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    from flows.pipeline import pipeline

    start = time.time()
    state = pipeline(out=str(out), profile="tiny", overrides=overrides, return_state=True)
    end = time.time()
    state.result()  # raises if the run failed
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id])))
        names = {r.id: client.read_flow(r.flow_id).name for r in children}
    ends = {names[r.id]: r.end_time.timestamp() for r in children}
    if set(ends) != set(STAGES):
        raise RuntimeError(f"pipeline's subflows: {sorted(ends)}")
    bounds = [start] + [ends[s] for s in STAGES[:-1]] + [end]
    return {s: b - a for s, a, b in zip(STAGES, bounds, bounds[1:])}


def outputs(out: Path) -> dict:
    """What both paths must agree on: manifest counts, every training loss, the report's scores."""
    from mumu.train.checkpoint import STATE_FILE, list_checkpoints

    manifest = json.loads((out / "data" / "manifest.json").read_text())
    losses = {s: json.loads((list_checkpoints(out / s / "checkpoints")[-1].path / STATE_FILE).read_text())["losses"]
              for s in ("pretrain", "tune")}
    rows = json.loads((out / "eval" / "report.json").read_text())["rows"]
    images = sum(1 for _ in (out / "eval").rglob("images/*/*.png"))
    return {"manifest": {k: manifest[k] for k in ("inputs", "written", "quarantined", "counts")},
            "losses": losses, "rows": rows, "generated images": images}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="profile override for the timed runs, as `mumu --set`, e.g. train.tune.max_steps=5")
    args = parser.parse_args()
    from mumu.cli import _overrides

    overrides = _overrides(args.set)
    from prefect import flow

    runtime = load_profile("tiny", overrides).runtime
    torch.set_num_threads(runtime.torch_threads or torch.get_num_threads())
    pool = max(1, runtime.workers) * 4  # the thread task runner's pool (flows/runners.py)
    paths = {"direct": lambda out, o: run_direct(out, o), "direct, threads": lambda out, o: run_direct(out, o, pool),
             "prefect": run_prefect}
    times: dict[str, list[dict[str, float]]] = {name: [] for name in paths}
    checks = []
    runs = iter(range(10_000))
    with tempfile.TemporaryDirectory() as tmp:
        flow(lambda: None, name="warm-up")()  # ephemeral API start-up, outside every timer
        t = time.perf_counter()
        for name, run in paths.items():
            run(Path(tmp) / f"run{next(runs)}", {**overrides, **WARM})
        print(f"warm-up (every path, short run): {time.perf_counter() - t:.0f} s", flush=True)
        for r in range(args.repeats):  # interleaved, so drift on a shared machine hits every path alike
            outs = {}
            for name, run in paths.items():
                outs[name] = Path(tmp) / f"run{next(runs)}"
                times[name].append(run(outs[name], overrides))
            checks.append({name: outputs(out) for name, out in outs.items()})
            print(f"repeat {r + 1}: " + ", ".join(f"{n} {sum(t[-1].values()):.1f} s" for n, t in times.items()),
                  flush=True)

    print(f"\ntiny profile, bundled samples, min of {args.repeats} interleaved repeats, torch threads "
          f"{torch.get_num_threads()}, {os.cpu_count()} cores, thread pool {pool}, overrides {overrides or 'none'}")
    best = {n: {s: min(t[s] for t in ts) for s in STAGES} | {"total": min(sum(t.values()) for t in ts)}
            for n, ts in times.items()}
    print(f"{'stage':<12}{'direct s':>9}{'threads s':>10}{'prefect s':>10}   prefect/direct       prefect/threads")
    for s in (*STAGES, "total"):
        d, th, p = (best[n][s] for n in paths)
        print(f"{s:<12}{d:>9.2f}{th:>10.2f}{p:>10.2f}   {p / d:6.3f} ({p - d:+6.2f} s)  {p / th:6.3f} ({p - th:+6.2f} s)")
    d, th, p = (best[n]["total"] for n in paths)
    print(f"end to end: prefect/direct {p / d:.3f} → orchestration overhead {100 * (p / d - 1):+.1f} % (target <= 5 %);"
          f" against the same thread pools (Prefect's own cost) {100 * (p / th - 1):+.1f} %")
    print("(prefect per stage: the pipeline's wall time split at its subflows' end times)")

    first = checks[0]["direct"]
    same = all(c == first for check in checks for c in check.values())
    print(f"same work on every path: {'yes' if same else 'NO'} — manifest {first['manifest']['written']} written / "
          f"{first['manifest']['quarantined']} quarantined of {first['manifest']['inputs']}; final losses "
          + ", ".join(f"{s} {v[-1]:.4f} ({len(v)} steps)" for s, v in first["losses"].items())
          + f"; {first['generated images']} generated images; report rows {'equal' if same else 'compared'}")
    if not same:
        for i, check in enumerate(checks):
            for name, got in check.items():
                for key in first:
                    if got[key] != first[key]:
                        print(f"  repeat {i + 1}, {name}: {key} differs from direct's first run:\n    {got[key]}")
        sys.exit(1)


if __name__ == "__main__":
    main()
