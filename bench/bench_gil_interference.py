"""How much each piece of build-data's background work slows the model calls beside it, in one process.

    python -m bench.bench_gil_interference [--images 384] [--shards 6] [--repeats 3] [--switch-ms 5 0.2]

The data stage runs its shard I/O on a background thread while the models run (runtime.write_behind, read_ahead).
Here each piece of that work runs in a loop on a thread while the detector and segmenter run on --shards shards
of the tiny profile, and the model calls' time is printed against the same calls with nothing beside them:
  ingest   stages.ingest (read, PNG decode, resize)
  write    stages.write (PNG encoding, tar, fsync, sha256, report)
  encode   the PNG encoding alone (shards.sample_members)
  tar      the tar writing alone, of already encoded members, to memory (webdataset's TarWriter: pure Python)
A loop keeps the thread busy all the time, so the ratios are the worst case of each piece, per second it runs:
what separates them is how much Python (which holds the GIL) sits between their C calls (which release it).
Each model op releases the GIL, and a thread running Python when it ends keeps it up to the interpreter's switch
interval, so pure-Python work stalls the models the most. --switch-ms repeats everything at other intervals.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from webdataset import TarWriter  # noqa: E402

from bench.bench_build_data import load_models, make_inputs  # noqa: E402
from mumu.config import load_profile  # noqa: E402
from mumu.data import stages  # noqa: E402
from mumu.data.shards import sample_members  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=384, help="inputs the background work loops over")
    parser.add_argument("--shards", type=int, default=6, help="shards of model calls timed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--switch-ms", type=float, nargs="+", default=[5.0, 0.2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_profile("tiny")
    data = cfg.data
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_inputs(tmp / "in", args.images)
        captioner, detector, segmenter = load_models(cfg)
        plan = stages.plan_shards(tmp / "in", data.ingest)
        ingested = [stages.ingest(s, data.ingest) for s in plan]
        phrased = [stages.find_entities(stages.caption(w, captioner), data.entities) for w in ingested]
        composed = [stages.compose_ingested(w, data, captioner, detector, segmenter) for w in ingested]
        samples = [[it.composed for it in w.items] for w in composed]
        members = [[(c.record.key, sample_members(c, data.write)) for c in s] for s in samples]
        writes = iter(range(1_000_000))

        def model_calls():
            for work in phrased[:args.shards]:
                images = [it.image for it in work.items]
                dets = detector.detect(images, [[e.phrase for e in it.entities] for it in work.items])
                segmenter.segment(images, [[d.box for d in ds] for ds in dets])

        def tar():
            for shard in members:
                writer = TarWriter(io.BytesIO(), user="mumu", group="mumu", mode=0o444, encoder=False, mtime=0)
                for key, files in shard:
                    writer.write({"__key__": key, **files})

        beside = {
            "nothing": None,
            "ingest": lambda: [stages.ingest(s, data.ingest) for s in plan],
            "write": lambda: [stages.write(w, tmp / f"out-{next(writes)}", data) for w in composed],
            "encode": lambda: [[sample_members(c, data.write) for c in s] for s in samples],
            "tar": tar,
        }
        print(f"model calls on {args.shards} shards of {data.ingest.images_per_shard} images; the background work "
              f"loops over {len(plan)} shards; best of {args.repeats}; load average {os.getloadavg()[0]:.1f}")
        for switch_ms in args.switch_ms:
            sys.setswitchinterval(switch_ms / 1000)
            base = None
            for name, work in beside.items():
                took = min(_timed_beside(model_calls, work) for _ in range(args.repeats))
                base = base or took
                print(f"  switch interval {switch_ms:4.1f} ms, beside {name:8s} {took:6.2f} s  {took / base:5.2f}x")


def _timed_beside(model_calls, work) -> float:
    """Seconds of `model_calls` while `work` runs in a loop on another thread (None: alone)."""
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            work()

    thread = threading.Thread(target=loop, daemon=True) if work is not None else None
    if thread is not None:
        thread.start()
        time.sleep(0.05)
    start = time.perf_counter()
    model_calls()
    took = time.perf_counter() - start
    stop.set()
    if thread is not None:
        thread.join()
    return took


if __name__ == "__main__":
    main()
