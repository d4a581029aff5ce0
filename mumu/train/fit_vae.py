"""Fit the tiny profile's autoencoder on the bundled samples, so that its latents carry the picture.

    python -m mumu.train.fit_vae --out mumu/resources/tiny_vae      # ~17 min on 2 shared cores; deterministic for a thread count

Why: a randomly initialised AutoencoderKL has a posterior std of ~1 per latent element against a mean of
~0.24, so two samples of one image are as far apart as two different images and the UNet never sees image
content. No pretrained VAE is reachable offline, so the tiny profile loads this one (frozen, like SDXL's).
The real profiles keep their pretrained VAEs.

Data, all rendered from what the repository ships: composed emoji scenes (mumu.data.scenes, the kind of
image the default run trains on), single emoji on plain backgrounds (the evaluation's subjects), the
bundled sample scenes, and plain colours. Loss: L1 + MSE reconstruction and a small KL term (SD's VAE
recipe without the perceptual and adversarial terms, which need pretrained networks). `scaling_factor`
is set so the scaled latents have unit variance, as SD's 0.18215 does. The summary written beside the
weights states the reconstruction error and how far apart latents of different images are compared with
the posterior's own sampling noise.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image
from tqdm import tqdm

from models.decoder import TINY_VAE
from mumu import SAMPLES_DIR
from mumu.data.scenes import PLAIN, load_emoji_names, render_scene
from mumu.io import write_text_atomic

# No mid-block attention: a third cheaper per step on CPU, and 16x16 latents of flat scenes do not need it.
# Twice the channels of the random tiny VAE: at 16/32/32 the emoji came back as brown blurs (their colours
# are what the subject metrics read).
FITTED_VAE_CONFIG = {**TINY_VAE, "block_out_channels": [24, 48, 48], "mid_block_add_attention": False}
# Pixels that differ from their image's median colour (the objects, not the background) weigh this much
# more in the reconstruction loss: objects cover a fifth of a scene but carry what the prompts name.
OBJECT_WEIGHT = 4.0  # (a weight of 1 + 4 = 5x)


def to_tensor(images: list[Image.Image], size: int) -> torch.Tensor:
    """RGB images -> [N, 3, size, size] in [-1, 1] (bicubic resize, as the training loader's crop does)."""
    arr = [np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), np.float32) for im in images]
    return torch.from_numpy(np.stack(arr) / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()


def emoji_on_plain(emoji_dir: Path, file: str, colour: tuple[int, int, int], size: int, scale: float = 0.7,
                   offset: tuple[int, int] = (0, 0)) -> Image.Image:
    """One emoji, `scale` of the side, centred (+ offset) on a plain background."""
    side = int(size * scale)
    em = Image.open(emoji_dir / file).convert("RGBA").resize((side, side), Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", (size, size), (*colour, 255))
    x, y = (size - side) // 2 + offset[0], (size - side) // 2 + offset[1]
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    layer.paste(em, (x, y))
    return Image.alpha_composite(canvas, layer).convert("RGB")


def training_images(samples_dir: Path, *, scenes: int, seed: int, size: int) -> list[Image.Image]:
    """The fitting set, fully determined by the bundled files and `seed`."""
    emoji_dir = samples_dir / "emoji"
    names = load_emoji_names(emoji_dir)
    rng = random.Random(seed)
    images = [render_scene(emoji_dir, seed * 100_000 + i, size=2 * size).image for i in range(scenes)]
    colours = list(PLAIN.values())
    for file in sorted(names):
        for _ in range(3):
            images.append(emoji_on_plain(emoji_dir, file, rng.choice(colours), size, scale=rng.uniform(0.4, 0.9),
                                         offset=(rng.randint(-8, 8), rng.randint(-8, 8))))
    images += [Image.open(p).convert("RGB") for p in sorted((samples_dir / "scenes").glob("scene_*.png"))]
    for _ in range(64):
        images.append(Image.new("RGB", (size, size), tuple(rng.randint(0, 255) for _ in range(3))))
    return images


def object_weights(x: torch.Tensor) -> torch.Tensor:
    """[N, 1, H, W] loss weights: 1 + OBJECT_WEIGHT where a pixel is far from its image's median colour."""
    median = x.flatten(2).median(dim=2).values[:, :, None, None]
    far = (x - median).abs().amax(dim=1, keepdim=True) > 0.15
    return 1.0 + OBJECT_WEIGHT * far.float()


@torch.no_grad()
def latent_separation(vae, data: torch.Tensor, generator: torch.Generator) -> dict:
    """How well latents tell images apart: mean L2 distance between posterior means of different images,
    against the distance between two posterior samples of the same image (sampling noise)."""
    dist = vae.encode(data).latent_dist
    mean = dist.mean.flatten(1)
    a = dist.sample(generator=generator).flatten(1)
    b = dist.sample(generator=generator).flatten(1)
    between = torch.cdist(mean, mean)
    off_diag = between[~torch.eye(len(mean), dtype=torch.bool)]
    within = (a - b).norm(dim=1)
    return {"between_images": round(float(off_diag.mean()), 4), "nearest_other_image": round(float(
            (between + torch.eye(len(mean)) * 1e9).min(1).values.mean()), 4),
            "within_image_samples": round(float(within.mean()), 4),
            "posterior_std": round(float(dist.std.mean()), 5), "latent_mean_abs": round(float(dist.mean.abs().mean()), 4)}


def fit_vae(samples_dir: Path, out_dir: Path, *, size: int = 64, steps: int = 2500, batch_size: int = 16,
            lr: float = 2e-3, kl_weight: float = 1e-6, scenes: int = 768, seed: int = 0) -> dict:
    """Fit the tiny AutoencoderKL and save it with diffusers' save_pretrained (safetensors) + summary.json."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    data = to_tensor(training_images(samples_dir, scenes=scenes, seed=seed, size=size), size)
    held = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:96]
    train_idx = torch.tensor(sorted(set(range(len(data))) - set(held.tolist())))
    vae = AutoencoderKL(**FITTED_VAE_CONFIG)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.05)
    gen = torch.Generator().manual_seed(seed)
    vae.train()
    losses = []
    for _ in tqdm(range(steps), desc="fit tiny VAE", unit="step", mininterval=5):
        x = data[train_idx[torch.randint(0, len(train_idx), (batch_size,), generator=gen)]]
        flip = torch.rand(batch_size, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        dist = vae.encode(x).latent_dist
        rec = vae.decode(dist.mean + dist.std * torch.randn(dist.mean.shape, generator=gen)).sample
        err = (rec - x).abs() + (rec - x) ** 2
        loss = (err * object_weights(x)).mean() + kl_weight * dist.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    vae.eval()
    with torch.no_grad():
        dist = vae.encode(data[held]).latent_dist
        scaling = 1.0 / float(dist.mean.std())
        rec = vae.decode(dist.mean).sample.clamp(-1, 1)
        mae = float((rec - data[held]).abs().mean() * 127.5)  # mean absolute error in 0..255 pixel units
        separation = latent_separation(vae, data[held], torch.Generator().manual_seed(seed + 1))
    vae.register_to_config(scaling_factor=scaling)
    out_dir.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(out_dir, safe_serialization=True)
    summary = {
        "command": f"python -m mumu.train.fit_vae --out {out_dir} --steps {steps} --seed {seed}",
        "images": len(data), "held_out_images": len(held), "size": size, "steps": steps, "batch_size": batch_size,
        "lr": lr, "kl_weight": kl_weight, "seed": seed, "final_loss": round(float(np.mean(losses[-50:])), 4),
        "held_out_reconstruction_mae_0_255": round(mae, 2), "scaling_factor": round(scaling, 5),
        "latents_unscaled": separation, "seconds": round(time.perf_counter() - t0, 1),
    }
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--samples", type=Path, default=SAMPLES_DIR.parent, help="folder with emoji/ and scenes/")
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (results are reproducible per count)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(json.dumps(fit_vae(args.samples, args.out, steps=args.steps, seed=args.seed), indent=1))


if __name__ == "__main__":
    main()
