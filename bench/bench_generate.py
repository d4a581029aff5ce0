"""Throughput of MumuSampler against a bare denoising loop on the same model, same process.

    python -m bench.bench_generate [--profile tiny] [--prompts 8] [--n 2] [--steps 10]
                                                  [--guidance 3.0] [--repeats 3] [--threads 1]

Prints images/s of
  - baseline: the loop written out: one encode of all prompts + the empty prompt, the noise of the whole
    batch from one generator, per step model.predict on [uncond; cond] + scheduler.step, vae decode,
    uint8 arrays — in batches of the sampler's batch_size, so the UNet sees the same shapes;
  - generate_batch: MumuSampler end to end (per-image generators, the trainer's empty condition,
    per-chunk encoding, PIL output);
  - generate x P: one generate() call per prompt (what a caller that does not batch gets);
and each one's throughput relative to the baseline. The model is built from the profile's config (random
weights): speed does not depend on training.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from mumu.config import load_profile
from mumu.config.eval import SamplerConfig
from mumu.generate import MumuSampler, build_scheduler
from mumu.prompt_syntax import load_image
from models.mumu_model import MumuModel

EMOJI = Path(__file__).resolve().parent.parent / "mumu" / "samples" / "emoji"


def prompts(count: int) -> list[list]:
    """Text-only, one-image and two-image prompts in turn, with the bundled emoji as subjects."""
    files = sorted(EMOJI.glob("*.webp"))
    imgs = [load_image(f) for f in files[:4]]  # RGBA emoji over white, as the CLI reads them
    kinds = [["a photo of a cat on a sofa"], ["a", imgs[0], "on a beach"], ["a", imgs[1], "next to a", imgs[2]]]
    return [kinds[i % 3] for i in range(count)]


def best_of_interleaved(fns: list, repeats: int) -> list[float]:
    """Min seconds of each fn over `repeats` rounds, the fns taking turns within a round, so a change in
    machine load (2 shared cores) hits all of them alike."""
    for fn in fns:
        fn()  # warm-up
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            start = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - start)
    return [min(ts) for ts in times]


@torch.no_grad()
def bare_loop(model, batch: list[list], cfg: SamplerConfig, seed: int) -> np.ndarray:
    b, res, f = len(batch), model.cfg.decoder.resolution, model.vae_scale_factor
    cond = model.encode(batch + [[]])  # prompts and the empty prompt, padded together by the tokenizer
    idx = torch.tensor([b] * b + list(range(b)))
    both = type(cond)(cond.hidden[idx], cond.pooled[idx], cond.attention_mask[idx], cond.entity_token_mask[idx],
                      cond.entity_valid[idx])
    sched = build_scheduler(cfg, model.scheduler_config)
    sched.set_timesteps(cfg.steps)
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn((b, 4, res // f, res // f), generator=g) * sched.init_noise_sigma
    time_ids = model.add_time_ids(2 * b)
    for t in sched.timesteps:
        x = sched.scale_model_input(torch.cat([latents, latents]), t)
        u, c = model.predict(x, t, both, time_ids).chunk(2)
        latents = sched.step(u + cfg.guidance_scale * (c - u), t, latents).prev_sample
    pixels = model.vae.decode(latents / model.latent_scaling_factor).sample
    return ((pixels.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = MumuModel.from_config(load_profile(args.profile).model).eval()
    model.attn_store.enabled = False
    cfg = SamplerConfig(steps=args.steps, guidance_scale=args.guidance, batch_size=args.batch_size)
    sampler = MumuSampler(model, cfg)
    ps = prompts(args.prompts)
    total = len(ps) * args.n
    flat = [p for p in ps for _ in range(args.n)]

    def baseline():
        for i in range(0, total, cfg.batch_size):
            bare_loop(model, flat[i:i + cfg.batch_size], cfg, seed=i)

    def batched():
        out = sampler.generate_batch(ps, n=args.n, seed=0)
        assert sum(len(x) for x in out) == total

    def one_by_one():
        for p in ps:
            sampler.generate(p, n=args.n, seed=0)

    res = model.cfg.decoder.resolution
    print(f"profile {args.profile}: {len(ps)} prompts x {args.n} images at {res} px, {args.steps} DDIM steps, "
          f"guidance {args.guidance}, batch_size {cfg.batch_size}, {args.threads} thread(s)")
    base, *others = best_of_interleaved([baseline, batched, one_by_one], args.repeats)
    print(f"{'baseline (bare loop)':<24} {total / base:8.2f} img/s  {base / total * 1e3:8.1f} ms/img")
    for name, t in zip(("generate_batch", f"generate x {len(ps)}"), others):
        print(f"{name:<24} {total / t:8.2f} img/s  {t / total * 1e3:8.1f} ms/img   "
              f"throughput ratio vs baseline {base / t:5.2f}")


if __name__ == "__main__":
    main()
