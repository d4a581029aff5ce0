"""A small AutoencoderKL trained on the ablation's scenes, so that pixels mean something.

Why: the tiny profile's VAE has random frozen weights, so decode(encode(x)) is not x and a generated image
tells nothing about what the UNet learned; no pretrained VAE is reachable offline. The ablation therefore
first fits the tiny VAE architecture (models/decoder.py TINY_VAE, 64 px -> 4x16x16 latents) as an
autoencoder on the training scenes (L1 + MSE reconstruction, a small KL term), sets `scaling_factor` so the
latents have unit variance (as SD's 0.18215 does), and saves it with diffusers' save_pretrained. All three
arms then load it through `model.decoder.vae: {pretrained: <dir>}` (frozen, as always): it is shared, so it
is not a difference between the arms.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from models.decoder import TINY_VAE
from mumu.io import write_text_atomic


def _load_images(scene_dir: Path, size: int, limit: int) -> torch.Tensor:
    files = sorted(scene_dir.glob("scene_*.png"))[:limit]
    if not files:
        raise FileNotFoundError(f"no scene_*.png in {scene_dir}")
    arr = [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.Resampling.BICUBIC), np.float32)
           for f in files]
    return torch.from_numpy(np.stack(arr) / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


def train_vae(scene_dir: Path, out_dir: Path, *, size: int = 64, steps: int = 300, batch_size: int = 8,
              lr: float = 3e-3, kl_weight: float = 1e-6, seed: int = 0, limit: int = 2000) -> dict:
    """Fit and save the VAE in out_dir (skipped when out_dir/vae_summary.json exists) → summary dict."""
    from diffusers import AutoencoderKL

    summary_path = out_dir / "vae_summary.json"
    if summary_path.exists() and (out_dir / "config.json").exists():
        return json.loads(summary_path.read_text())
    t0 = time.perf_counter()
    data = _load_images(scene_dir, size, limit)
    torch.manual_seed(seed)
    # No mid-block attention: a third cheaper per step on CPU, and 16x16 latents of flat scenes do not need it.
    vae = AutoencoderKL(**{**TINY_VAE, "sample_size": size, "mid_block_add_attention": False})
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.05)
    gen = torch.Generator().manual_seed(seed)
    vae.train()
    losses = []
    for _step in range(steps):
        idx = torch.randint(0, len(data), (batch_size,), generator=gen)
        x = data[idx]
        flip = torch.rand(batch_size, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        dist = vae.encode(x).latent_dist
        z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + kl_weight * dist.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    vae.eval()
    with torch.no_grad():
        held = data[-min(64, len(data)):]
        dist = vae.encode(held).latent_dist
        std = float(dist.mean.std())
        rec = vae.decode(dist.mean).sample.clamp(-1, 1)
        mae = float((rec - held).abs().mean() * 127.5)  # mean absolute error in 0..255 pixel units
    vae.register_to_config(scaling_factor=1.0 / std)
    out_dir.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(out_dir)
    summary = {"steps": steps, "batch_size": batch_size, "images": len(data), "final_loss": float(np.mean(losses[-20:])),
               "reconstruction_mae_0_255": round(mae, 2), "scaling_factor": 1.0 / std,
               "seconds": round(time.perf_counter() - t0, 1)}
    write_text_atomic(summary_path, json.dumps(summary, indent=1, sort_keys=True) + "\n")  # the "done" marker
    return summary
