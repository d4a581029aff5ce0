"""A deterministic preview grid during training: the current model sampled on fixed prompts.

It uses the same sampler as `mumu generate` (DDIM, classifier-free guidance against the empty prompt),
so a preview shows what generation from this checkpoint would give.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import PIL.Image

from mumu.config.eval import SamplerConfig
from mumu.generate import MumuSampler
from mumu.io import atomic_path


def sample_grid(model, prompts: list[list], path: Path, *, steps: int, seed: int, guidance: float = 3.0) -> Path:
    """Row of images, one per prompt, as a PNG (the model is returned to training mode afterwards)."""

    was_training = model.training
    try:
        sampler = MumuSampler(model, SamplerConfig(name="ddim", steps=steps, guidance_scale=guidance))
        images = [row[0] for row in sampler.generate_batch(prompts, n=1, seed=seed)]
    finally:
        model.train(was_training)
    grid = np.concatenate([np.asarray(im.convert("RGB")) for im in images], axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        PIL.Image.fromarray(grid).save(tmp, format="PNG")
    return path
