"""Metric pass time per 1k generated images, against baselines measured in the same process.

    python -m bench.bench_metrics [--images 64] [--real-size]

1. Tiny profile encoders: a full `mumu.eval.runner.score` pass (PNG decode, DINO + CLIP image
   features of generated and reference images, CLIP text, cosine scores, Fréchet distance) over
   `--images` generated images; baseline = the bare encoder forward passes on the same decoded
   images. Printed as seconds per 1k images and the ratio full pass / bare forward (the overhead of
   I/O, preprocessing and metric math).
2. `--real-size`: the same for DINO ViT-S/16 and CLIP ViT-B/32 at their real sizes (224 px,
   randomly initialised from the real configs, since no weights can be downloaded here), giving
   the per-1k cost of the mumu-sdxl profile's metric pass on this CPU.
3. Fréchet distance at the feature sizes used (CLIP 512, DINO 384) and Inception's 2048: the
   eigen form used here vs scipy.linalg.sqrtm(S1 @ S2) (pytorch-fid's form) as the baseline.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import scipy.linalg  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from models.eval_encoders import ClipEncoder, DinoEncoder, EvalEncoders  # noqa: E402
from mumu.config import ModelSource, load_profile  # noqa: E402
from mumu.config.eval import BenchmarkConfig  # noqa: E402
from mumu.eval import metrics  # noqa: E402
from mumu.eval.benchmarks import build_benchmarks  # noqa: E402
from mumu.eval.items import load_rgb  # noqa: E402
from mumu.eval.runner import generate_benchmark, score  # noqa: E402


def noisy_copy(prompt, n, seed):
    ref = np.asarray(next(p for p in prompt if isinstance(p, Image.Image)).resize((256, 256)), np.float64)
    rng = np.random.default_rng(seed)
    return [Image.fromarray(np.clip(ref + rng.normal(0, 20, ref.shape), 0, 255).astype(np.uint8)) for _ in range(n)]


def timed(fn, repeats: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def metric_pass(encoders, n_images: int, label: str, batch_size: int) -> None:
    cfg = load_profile("tiny", {"eval.samples_per_prompt": 2, "eval.chunk_size": 8, "eval.batch_size": batch_size}).eval
    n_items = max(1, n_images // 2)
    subjects = max(1, min(60, n_items // 2))
    bench = build_benchmarks(BenchmarkConfig(kinds=("single",), max_subjects=subjects, max_templates=2))[0]
    bench = bench.model_copy(update={"items": bench.items[:n_items]})
    with tempfile.TemporaryDirectory() as tmp:
        generate_benchmark(bench, noisy_copy, tmp, cfg)
        files = sorted(str(p) for p in Path(tmp, "images").rglob("*.png"))
        images = [load_rgb(p) for p in files]
        score(bench, tmp, encoders, cfg)  # warm-up (allocator, first-call overheads)
        full = timed(lambda: score(bench, tmp, encoders, cfg), repeats=2)

        def bare():
            encoders.dino.features(images, batch_size)
            encoders.clip.image_embeds(images, batch_size)

        base = timed(bare, repeats=2)
    n = len(files)
    print(f"{label}: metric pass over {n} generated images (+{len(bench.reference_images())} references): "
          f"{full:.2f} s = {full / n * 1000:.1f} s per 1k images; bare DINO+CLIP forward {base / n * 1000:.1f} s "
          f"per 1k; ratio full/bare = {full / base:.2f}")


def frechet_bench() -> None:
    rng = np.random.default_rng(0)
    for d in (384, 512, 2048):
        x, y = rng.normal(size=(2 * d, d)), rng.normal(size=(2 * d, d)) + 0.1
        s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
        mu1, mu2 = x.mean(0), y.mean(0)
        ours = timed(lambda: metrics.frechet_distance(mu1, s1, mu2, s2), repeats=3)
        ref = timed(lambda: scipy.linalg.sqrtm(s1 @ s2), repeats=3)
        print(f"Fréchet distance, D={d}: eigen form {ours * 1000:.0f} ms; scipy sqrtm baseline {ref * 1000:.0f} ms; "
              f"ratio {ours / ref:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--real-size", action="store_true", help="also time ViT-S/16 + CLIP ViT-B/32 at 224 px")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    # Best-of-N timings; on a shared machine the load average is part of the result.
    print(f"torch threads: {torch.get_num_threads()}; load average {os.getloadavg()[0]:.1f}")
    metric_pass(EvalEncoders.from_config(load_profile("tiny").eval), args.images, "tiny encoders", 16)
    if args.real_size:
        from transformers import CLIPConfig, ViTConfig

        dino_cfg = {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6, "intermediate_size": 1536,
                    "image_size": 224, "patch_size": 16, "initializer_range": 0.02}
        clip_defaults = CLIPConfig()  # the library defaults are ViT-B/32 with the 512-d projection
        assert clip_defaults.vision_config.patch_size == 32 and clip_defaults.projection_dim == 512
        assert ViTConfig(**dino_cfg).hidden_size == 384
        clip_cfg = {"projection_dim": 512, "text": {"hidden_size": 512, "intermediate_size": 2048,
                                                    "num_hidden_layers": 12, "num_attention_heads": 8,
                                                    "initializer_factor": 1.0},
                    "vision": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                               "num_attention_heads": 12, "image_size": 224, "patch_size": 32,
                               "initializer_factor": 1.0}}
        real = EvalEncoders(DinoEncoder.from_source(ModelSource(config=dino_cfg)),
                            ClipEncoder.from_source(ModelSource(config=clip_cfg)))
        metric_pass(real, args.images, "real-size ViT-S/16 + CLIP ViT-B/32 (224 px)", 32)
    frechet_bench()


if __name__ == "__main__":
    main()
