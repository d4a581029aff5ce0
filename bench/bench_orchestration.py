"""Orchestration overhead of the build-data flow, and what 2 Dask workers buy over 1.

    python -m bench.bench_orchestration [--images 48] [--per-shard 8] [--repeats 2] [--skip-dask]

1. Same process, same tiny models, same inputs, fresh output folder each time:
   - direct:  mumu.data.stages.run_local (the stage functions called one after another per shard);
   - flow:    flows.build_data.build_data under Prefect (ephemeral API; its start-up excluded by running a
              trivial flow first; models already cached in this process by a warm-up run, as run_local's
              are built before its timer).
   Prints flow/direct and the overhead (target <= 5 %).
2. The flow with runtime.task_runner=dask, workers=2 vs workers=1 (flows.runners.task_runner, the same
   way the CLI and the pipeline choose it). Each Dask run starts its own local cluster, whose worker
   processes import torch and load the models: that start-up is part of what a user waits for, so it is
   inside the timer (it is why 1 Dask worker is slower than the in-process thread runner).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# Dask worker processes inherit this: one intra-op thread per worker, so N workers use N cores.
# (runtime.torch_threads is not applied by the tasks yet.)
_threads = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "1"
os.environ.setdefault("OMP_NUM_THREADS", _threads)

import torch  # noqa: E402

from bench.bench_build_data import make_inputs  # noqa: E402  (bundled scenes + rendered ones, with captions)
from mumu.config import config_hash, load_profile  # noqa: E402
from mumu.data import stages  # noqa: E402


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--per-shard", type=int, default=8, help="data.ingest.images_per_shard")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads per process")
    parser.add_argument("--only", choices=["overhead", "dask"], help="run one part")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from prefect import flow

    from flows.build_data import build_data
    from models.captioner import Captioner
    from models.detector import Detector
    from models.segmenter import Segmenter
    from tasks.model_cache import cached_model

    overrides = {"data.ingest.images_per_shard": args.per_shard, "runtime.torch_threads": args.threads}
    cfg = load_profile("tiny", overrides)
    data = cfg.data
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        inputs = tmp / "in"
        make_inputs(inputs, args.images)
        n_shards = len(stages.plan_shards(inputs, data.ingest))
        runs = iter(range(10_000))

        # The same model objects for both paths: the flow's tasks take them from this process's cache.
        dev = torch.device("cpu")
        captioner = cached_model("captioner", data.caption, dev, lambda: Captioner.from_config(data.caption, dev))
        detector = cached_model("detector", data.detect, dev, lambda: Detector.from_config(data.detect, dev))
        segmenter = cached_model("segmenter", data.segment, dev, lambda: Segmenter.from_config(data.segment, dev))

        def direct():
            stages.run_local(inputs, tmp / f"out{next(runs)}", data, captioner, detector, segmenter, config_hash(data))

        def flowed(runner_overrides=None):
            o = {**overrides, **(runner_overrides or {})}  # build-data maps its shards on the profile's runner
            build_data(input_path=str(inputs), out=str(tmp / f"out{next(runs)}"), profile="tiny", overrides=o)

        flow(lambda: None, name="warm-up")()  # ephemeral API start-up, outside every timer
        if args.only != "dask":
            overhead(args, n_shards, direct, flowed)
        if args.only != "overhead":
            speed_up(args, flowed)


def noop_flow_seconds(n_shards: int) -> float:
    """The floor: a flow of the same shape (7 mapped stages over n shards + 2) whose tasks do nothing."""
    from prefect import flow, task, unmapped
    from prefect.cache_policies import NO_CACHE

    @task(cache_policy=NO_CACHE, persist_result=False)
    def stage(x, k):
        return x

    @flow(name="noop-build-data")
    def noop(n: int):
        work = stage.map(list(range(n)), unmapped(-1))
        for k in range(6):
            work = stage.map(work, unmapped(k))
        return stage(stage([w.result() for w in work], -2), -3)

    noop(n_shards)
    return timed(lambda: noop(n_shards))


def overhead(args, n_shards, direct, flowed) -> None:
    direct()
    flowed()  # warm both paths (first-call costs: imports, allocator, tokenizers)
    d_times, f_times = [], []
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits both alike
        d_times.append(timed(direct))
        f_times.append(timed(flowed))
    d, f = min(d_times), min(f_times)
    n_tasks = n_shards * 7 + 2
    print(f"{args.images} images in {n_shards} shards ({n_tasks} task runs), tiny models, torch threads {args.threads}")
    print(f"direct run_local: {d:7.2f} s  (runs: {', '.join(f'{t:.2f}' for t in d_times)})")
    print(f"prefect flow:     {f:7.2f} s  (runs: {', '.join(f'{t:.2f}' for t in f_times)})")
    print(f"flow/direct: {f / d:.3f}  → orchestration overhead {100 * (f / d - 1):+.1f} % (target <= 5 %)")
    print(f"overhead per task run: {(f - d) / n_tasks * 1000:.1f} ms")
    floor = noop_flow_seconds(n_shards)
    print(f"a flow of the same shape whose tasks do nothing: {floor:.2f} s = {floor / n_tasks * 1000:.1f} ms "
          f"per task run (Prefect's own cost)")


def speed_up(args, flowed) -> None:
    from distributed import LocalCluster

    cold, warm = {}, {}
    for workers in (1, 2):
        # (a) what `--set runtime.task_runner=dask --set runtime.workers=N` does: a new local cluster per
        #     run, whose worker processes import torch and load the models before the first shard
        o = {"runtime.task_runner": "dask", "runtime.workers": workers}
        cold[workers] = [timed(lambda: flowed(o)) for _ in range(args.repeats)]
        # (b) an existing cluster (runtime.dask_address), models already loaded in its workers by a first run
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as c:
            o = {"runtime.task_runner": "dask", "runtime.dask_address": c.scheduler_address}
            flowed(o)
            warm[workers] = [timed(lambda: flowed(o)) for _ in range(args.repeats)]
    for name, times in (("new cluster per run", cold), ("warm cluster", warm)):
        one, two = min(times[1]), min(times[2])
        print(f"dask, {name}: 1 worker {one:6.2f} s, 2 workers {two:6.2f} s → speed-up {one / two:.2f}x "
              f"(runs: {times[1]} / {times[2]})")
    print(f"({os.cpu_count()} cores, {args.threads} torch thread(s) per worker process)")


if __name__ == "__main__":
    main()
