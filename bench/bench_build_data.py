"""build-data throughput: the Prefect flow vs the bare model calls it wraps, in one process.

    python bench/bench_build_data.py [--images 48]

Prints (1) images/s of the whole flow (decode → caption → entities → detect → segment → compose → write,
under Prefect, server start excluded) against images/s of the three model calls alone on the same images
(captioner on the uncaptioned ones, detector on all, segmenter on the boxes), (2) shard write MB/s
against a raw tarfile write of the same member bytes, (3) peak RSS.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
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
    stages.run_local(inputs, out, cfg.data, *models, "bench")
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
    """Timed on a warm process: the API started and the models in the task cache, as the bare side has them."""
    from flows.build_data import build_data

    warm = out.parent / "warm-up"
    make_inputs(warm / "in", 4)
    build_data(input_path=str(warm / "in"), out=str(warm / "out"), profile="tiny", overrides=overrides)
    start = time.perf_counter()
    build_data(input_path=str(inputs), out=str(out), profile="tiny", overrides=overrides)
    return time.perf_counter() - start


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
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (both sides)")
    parser.add_argument("--images-per-shard", type=int, default=None,
                        help="override data.ingest.images_per_shard (Prefect's cost is per task run, i.e. per shard)")
    args = parser.parse_args()
    overrides = {"data.ingest.images_per_shard": args.images_per_shard} if args.images_per_shard else {}
    cfg = load_profile("tiny", overrides)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_inputs(tmp / "in", args.images)
        models = load_models(cfg)
        bare = bare_model_seconds(tmp / "in", cfg, models)
        plain = stages_seconds(tmp / "in", tmp / "plain", cfg, models)
        flowed = flow_seconds(tmp / "in", tmp / "out", overrides)
        ours, tar_only, raw = write_rates(tmp / "in", tmp / "write", cfg)
    n = args.images
    per_shard = cfg.data.ingest.images_per_shard
    print(f"flow:        {n / flowed:8.2f} images/s ({flowed:.2f} s for {n}, {per_shard} images per shard)")
    print(f"stages, no Prefect: {n / plain:8.2f} images/s ({plain:.2f} s)")
    print(f"bare models: {n / bare:8.2f} images/s ({bare:.2f} s)")
    print(f"ratio stages/bare throughput: {bare / plain:.2f}x (the data code's own cost)")
    print(f"ratio flow/bare throughput: {bare / flowed:.2f}x (target >= 0.8)")
    print(f"shard write: {ours:.1f} MB/s including PNG encoding; {tar_only:.1f} MB/s without it, vs a raw "
          f"tarfile write of the same bytes {raw:.1f} MB/s (ratio {tar_only / raw:.2f})")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
