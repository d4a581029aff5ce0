"""Training-step cost: MumuModel's step vs a bare diffusers UNet + VAE step, in one process.

    python -m bench.bench_train [--steps 20] [--profile tiny]

Same tiny UNet weights, same batch (2 targets at the profile's resolution, one prompt with 2 crops).
- bare:   VAE encode (no grad) -> DDPM noise -> UNet(fixed encoder states, text_time) -> MSE -> backward -> AdamW
- mumu:   prepare(examples) -> training_loss (Idefics2 encoder + connector + the same UNet) -> backward -> AdamW
- mumu+attn: the same with the attention-mask loss (attn2 probabilities materialised, captured, reduced)
- cached:  mumu with the feature cache (models/cached.py): the targets' VAE posteriors and the crops' vision-tower
           grids computed once, outside the timer, as `mumu cache-features` does (the tiny encoder trains LoRA, so
           its prompt states are not cacheable)
- prompt:  prepare + encoder + connector alone (forward + backward): the part the bare step does not have
Steps are interleaved (bare, mumu, mumu+attn, cached, prompt, bare, ...) so load from other processes hits
all alike; medians are reported. Prints the ratios (targets: mumu/bare <= 1.15, attn/no-attn <= 1.2; cached vs
uncached vs bare) and the peak RSS.
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mumu.config import load_profile  # noqa: E402
from mumu.config.train import AttnLossConfig  # noqa: E402
from mumu.train.data import Example  # noqa: E402
from mumu.train.optim import step_generator  # noqa: E402
from models.cached import CachedFeatures  # noqa: E402


def examples(res: int) -> list[Example]:
    img = np.full((res, res, 3), 128, np.uint8)
    a = np.zeros((res, res), bool)
    a[: res // 2, : res // 2] = True
    b = np.zeros((res, res), bool)
    b[res // 2:, res // 2:] = True
    img[a], img[b] = (220, 30, 30), (30, 30, 220)
    red, blue = PIL.Image.new("RGB", (res // 2, res // 2), (220, 30, 30)), PIL.Image.new("RGB", (res // 2, res // 2), (30, 30, 220))
    target = PIL.Image.fromarray(img)
    return [Example("a", ["a red", red, "and a blue", blue, "square"], target, [a, b]),
            Example("b", ["a red and a blue square"], target, [])]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is robust on a shared box)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from models.mumu_model import MumuModel

    prof = load_profile(args.profile)
    model = MumuModel.from_config(prof.model).train()
    exs = examples(prof.model.decoder.resolution)
    opt = torch.optim.AdamW([p for g in model.parameter_groups().values() for p in g], lr=1e-5, foreach=True)

    # The bare baseline: an independent copy of the same UNet (stock SDPA processors) and the same VAE.
    from diffusers.models.attention_processor import AttnProcessor2_0

    unet = copy.deepcopy(model.unet).train()
    unet.set_attn_processor(AttnProcessor2_0())
    vae, sched = model.vae, model.decoder.scheduler
    bare_opt = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=1e-5, foreach=True)
    with torch.no_grad():
        batch0 = model.prepare(exs)
        cond0 = model.encode_tokens(batch0.tokens)
    states, pooled, mask = cond0.hidden.detach(), cond0.pooled.detach(), cond0.attention_mask
    pixels, time_ids = batch0.pixels, batch0.add_time_ids

    def bare_step(i: int) -> None:
        g = step_generator(0, i)
        with torch.no_grad():
            lat = vae.encode(pixels).latent_dist.sample(generator=g) * vae.config.scaling_factor
        t = torch.randint(0, sched.config.num_train_timesteps, (lat.shape[0],), generator=g)
        noise = torch.randn(lat.shape, generator=g)
        pred = unet(sched.add_noise(lat, noise, t), t, encoder_hidden_states=states, encoder_attention_mask=mask,
                    added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        F.mse_loss(pred, noise).backward()
        bare_opt.step()
        bare_opt.zero_grad(set_to_none=True)

    def mumu_step(i: int, weight: float) -> None:
        out = model.training_loss(model.prepare(exs), step_generator(0, i), AttnLossConfig(weight=weight),
                                  cfg_dropout=0.1)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    # The cache of these two examples, as cache-features computes it (eval mode, no grad).
    from models.mumu_model import target_pixels

    with torch.no_grad():
        model.eval()
        posteriors = model.decoder.encode_posterior(torch.stack([target_pixels(ex.image, prof.model.decoder.resolution)[0]
                                                                 for ex in exs]))
        crops = [seg for seg in exs[0].prompt if isinstance(seg, PIL.Image.Image)]
        grids = model.encoder.vision_grids(*model.encoder.preprocess_images(crops))
        model.train()
    cached_exs = [Example(ex.key, ex.prompt, ex.image, ex.entity_masks,
                          CachedFeatures(posterior=posteriors[b], images=tuple(grids) if b == 0 else ()))
                  for b, ex in enumerate(exs)]

    def cached_step(i: int) -> None:
        out = model.training_loss(model.prepare(cached_exs), step_generator(0, i), AttnLossConfig(weight=0.0),
                                  cfg_dropout=0.1)
        out["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def prompt_only(i: int) -> None:
        """What mumu adds in front of the UNet: prepare + Idefics2 encoder + connector, forward and backward."""
        cond = model.encode_tokens(model.prepare(exs).tokens)
        (cond.hidden.sum() + cond.pooled.sum()).backward()
        model.zero_grad(set_to_none=True)

    runs = {"bare": bare_step, "mumu": lambda i: mumu_step(i, 0.0), "mumu+attn": lambda i: mumu_step(i, 0.1),
            "cached": cached_step, "prompt": prompt_only}
    # CPU time of this process (process_time) is what the comparison needs on a shared box: other
    # processes' load inflates wall time by preemption, not our CPU seconds. Wall time is printed too.
    times: dict[str, list[float]] = {k: [] for k in runs}
    wall: dict[str, list[float]] = {k: [] for k in runs}
    for i in range(args.steps + 2):
        for name, fn in runs.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn(i)
            if i >= 2:  # first two rounds: warm-up
                times[name].append(time.process_time() - c0)
                wall[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n_trainable = sum(p.numel() for g in model.parameter_groups().values() for p in g)
    print(f"profile {args.profile}: {args.steps} steps each, batch {len(exs)}, {n_trainable} trainable parameters")
    for k, v in med.items():
        print(f"  {k:10s} median step {v * 1000:8.1f} ms CPU  (min {min(times[k]) * 1000:.1f} ms; "
              f"wall median {statistics.median(wall[k]) * 1000:.1f} ms)")
    mins = {k: min(v) for k, v in times.items()}
    for label, d in (("median", med), ("min", mins)):
        print(f"[{label}] mumu / bare diffusers step:    {d['mumu'] / d['bare']:.2f}x  (target <= 1.15); "
              f"prompt encoding alone {d['prompt'] / d['bare']:.2f}x bare, "
              f"(mumu - prompt) / bare {(d['mumu'] - d['prompt']) / d['bare']:.2f}x")
        print(f"[{label}] with / without attention loss: {d['mumu+attn'] / d['mumu']:.2f}x  (target <= 1.2)")
        print(f"[{label}] cached / bare {d['cached'] / d['bare']:.2f}x, uncached (mumu) / bare "
              f"{d['mumu'] / d['bare']:.2f}x, cached / uncached {d['cached'] / d['mumu']:.2f}x")
    print(f"peak RSS: {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
