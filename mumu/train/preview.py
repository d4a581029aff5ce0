"""A deterministic preview grid during training: a few DDIM steps of the current model on fixed prompts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image
import torch

from mumu.io import atomic_path


@torch.no_grad()
def sample_grid(model, prompts: list[list], path: Path, *, steps: int, seed: int, guidance: float = 3.0) -> Path:
    """Row of images, one per prompt (with classifier-free guidance against the empty prompt), as a PNG."""
    from diffusers import DDIMScheduler

    was_training = model.training
    model.eval()
    model.attn_store.enabled = model.attn_store.recording = False
    try:
        sched = DDIMScheduler.from_config(model.scheduler_config)
        sched.set_timesteps(steps)
        n = len(prompts)
        cond = model.encode(prompts)
        uncond = model.encode([[]] * n)
        # Equal lengths for one batched UNet call: pad the (1-token) empty prompts with masked positions.
        pad = cond.hidden.shape[1] - uncond.hidden.shape[1]
        u_hidden = torch.nn.functional.pad(uncond.hidden, (0, 0, 0, pad))
        u_mask = torch.nn.functional.pad(uncond.attention_mask, (0, pad))
        res = model.cfg.decoder.resolution
        side = res // model.vae_scale_factor
        g = torch.Generator().manual_seed(seed)
        latents = torch.randn((n, model.unet.config.in_channels, side, side), generator=g).to(model.device)
        latents = latents * sched.init_noise_sigma
        time_ids = model.add_time_ids(2 * n, res)
        both = type(cond)(torch.cat([u_hidden, cond.hidden]), torch.cat([uncond.pooled, cond.pooled]),
                          torch.cat([u_mask, cond.attention_mask]), cond.entity_token_mask, cond.entity_valid)
        for t in sched.timesteps:
            inp = sched.scale_model_input(torch.cat([latents, latents]), t)
            eps_u, eps_c = model.predict(inp, t, both, time_ids).chunk(2)
            latents = sched.step(eps_u + guidance * (eps_c - eps_u), t, latents).prev_sample
        images = model.decoder.decode_latents(latents)
    finally:
        model.train(was_training)
    arr = ((images.float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    grid = np.concatenate(list(arr), axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        PIL.Image.fromarray(grid).save(tmp, format="PNG")
    return path
