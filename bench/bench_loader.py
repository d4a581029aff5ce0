"""Throughput of the training-data loader against a bare tarfile read of the same shards, same process.

    python -m bench.bench_loader [--shards 4] [--per-shard 64] [--size 64] [--batches 60]

Writes schema-following shards (target + 2 entities with crop / segment / mask, every 8th text-only) of
tiny random images to a temporary directory, then prints samples/s of
  - baseline: tarfile streaming every member's bytes (no decode), i.e. the floor of any tar loader;
  - iterate_examples in each prompt mode (0 workers; mumu also with 2 workers and with augmentation),
and the baseline/loader ratio (how many times slower than raw tar reading the loader is).
"""

from __future__ import annotations

import argparse
import io
import itertools
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from data_schemas.sample import EntityRecord, ImageSegment, SampleRecord, TextSegment
from mumu.config.train import AugmentConfig, StageConfig
from mumu.train.data import LoaderStats, iterate_examples


def _png(array: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode).save(buf, "PNG")
    return buf.getvalue()


def make_sample(key: str, size: int, rng: np.random.Generator, text_only: bool) -> dict:
    target = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    members, entities = {"image.png": _png(target, "RGB")}, []
    mumu, unimo = [TextSegment(text="a ")], [TextSegment(text="a ")]
    for i in range(2):
        x0, y0 = i * size // 4, i * size // 8
        box = (x0, y0, x0 + size // 2, y0 + size // 2)
        mask = np.zeros((size, size), np.uint8)
        mask[box[1] : box[3], box[0] : box[2]] = 255
        crop = target[box[1] : box[3], box[0] : box[2]]
        members |= {f"crop_{i}.png": _png(crop, "RGB"), f"segment_{i}.png": _png(crop, "RGB"),
                    f"mask_{i}.png": _png(mask, "L")}
        entities.append(EntityRecord(phrase=f"thing{i}", char_span=(0, 6), box=box, score=1.0, crop=f"crop_{i}.png",
                                     segment=f"segment_{i}.png", mask=f"mask_{i}.png", in_prompt=True))
        mumu += [ImageSegment(ref=f"crop_{i}.png", entity=i), TextSegment(text=f"thing{i} ")]
        unimo += [ImageSegment(ref=f"segment_{i}.png", entity=i), TextSegment(text=" ")]
    caption = "a thing0 and thing1"
    if text_only:
        mumu = unimo = [TextSegment(text=caption)]
    record = SampleRecord(key=key, source=key, image="image.png", width=size, height=size, caption=caption,
                          caption_source="given", entities=entities, text_only=text_only, prompt_mumu=mumu,
                          prompt_unimo=unimo)
    return {"__key__": key, "json": record.model_dump_json().encode(), **members}


def write_shards(root: Path, n_shards: int, per_shard: int, size: int) -> list[str]:
    rng = np.random.default_rng(0)
    urls = []
    for s in range(n_shards):
        path = root / f"shard-{s:05d}.tar"
        with wds.TarWriter(str(path)) as writer:
            for i in range(per_shard):
                writer.write(make_sample(f"s{s}k{i:04d}", size, rng, text_only=i % 8 == 7))
        urls.append(str(path))
    return urls


def bare_tar_rate(urls: list[str], min_seconds: float = 1.0) -> float:
    """Samples/s of streaming every member's bytes with tarfile (repeated passes for a stable figure)."""
    samples, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds:
        for url in urls:
            keys = set()
            with tarfile.open(url, mode="r|") as tar:
                for member in tar:
                    tar.extractfile(member).read()
                    keys.add(member.name.split(".", 1)[0])
            samples += len(keys)
    return samples / (time.perf_counter() - t0)


def loader_rate(urls: list[str], stage: StageConfig, batches: int) -> tuple[float, LoaderStats]:
    stats = LoaderStats()
    stream = iterate_examples(urls, stage, seed=0, stats=stats)
    next(stream)  # start-up (workers, shuffle-buffer fill) is not steady-state throughput
    t0 = time.perf_counter()
    n = sum(len(batch) for batch in itertools.islice(stream, batches))
    rate = n / (time.perf_counter() - t0)
    stream.close()
    return rate, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--per-shard", type=int, default=64)
    parser.add_argument("--size", type=int, default=64, help="target side in pixels")
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        urls = write_shards(Path(tmp), args.shards, args.per_shard, args.size)
        mb = sum(Path(u).stat().st_size for u in urls) / 1e6
        print(f"{args.shards} shards x {args.per_shard} samples, {args.size}px targets, {mb:.1f} MB")
        base = bare_tar_rate(urls)
        print(f"{'bare tarfile read':34s} {base:9.0f} samples/s")
        common = dict(batch_size=args.batch_size, shuffle_buffer=64)
        cases = {
            "text (0 workers)": StageConfig(prompt_mode="text", **common),
            "mumu (0 workers)": StageConfig(prompt_mode="mumu", **common),
            "unimo (0 workers)": StageConfig(prompt_mode="unimo", **common),
            "mumu + augment share 0.5 (0 w.)": StageConfig(prompt_mode="mumu", augment=AugmentConfig(), **common),
            "mumu (2 workers)": StageConfig(prompt_mode="mumu", loader_workers=2, **common),
        }
        for name, stage in cases.items():
            rate, stats = loader_rate(urls, stage, args.batches)
            print(f"{'iterate_examples ' + name:34s} {rate:9.0f} samples/s   bare/loader = {base / rate:5.1f}x"
                  f"   (skipped {stats.skipped_samples}, bad shards {len(stats.bad_shards)})")


if __name__ == "__main__":
    main()
