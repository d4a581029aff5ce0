"""MUMU's conditioning-image augmentation: random crop, flip, grayscale and pixel noise on a share of crops.

MUMU augments the image crops inserted into the prompt so the model learns to take the *subject* from a
conditioning image rather than copy its exact pixels (pose, framing, colour cast). Every random draw comes
from a generator passed in by the caller, so the data loader can derive one per sample from
(seed, sample index) and a resumed run sees the same augmentations as an uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageOps

from mumu.config.train import AugmentConfig

Generator = np.random.Generator | torch.Generator


def as_numpy_rng(generator: Generator) -> np.random.Generator:
    """A numpy generator drawn from `generator` (a torch generator is advanced by one draw)."""
    if isinstance(generator, np.random.Generator):
        return generator
    if isinstance(generator, torch.Generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        return np.random.default_rng(seed)
    raise TypeError(f"expected a numpy or torch generator, got {type(generator).__name__}")


def augment_image(image: Image.Image, cfg: AugmentConfig, generator: Generator) -> Image.Image:
    """One augmented copy of an RGB image, same size and mode (the input is not modified).

    The same number of draws is taken whatever the outcome of each coin, so one augmentation's
    choices do not shift the draws of the next one that shares the generator.
    """
    rng = as_numpy_rng(generator)
    image = image.convert("RGB")
    w, h = image.size
    # Always draw every variable (see docstring), then use the ones the config enables.
    side = rng.uniform(cfg.random_crop, 1.0, size=2) if cfg.random_crop < 1.0 else np.ones(2)
    offset = rng.random(2)
    flip = rng.random() < 0.5
    gray = rng.random() < cfg.grayscale
    noise_seed = int(rng.integers(0, 2**62))

    out = image
    cw, ch = max(1, round(w * float(side[0]))), max(1, round(h * float(side[1])))
    if (cw, ch) != (w, h):
        x0, y0 = int(offset[0] * (w - cw + 1)), int(offset[1] * (h - ch + 1))
        # Resize back so the crop keeps the size the rest of the pipeline expects.
        out = out.crop((x0, y0, x0 + cw, y0 + ch)).resize((w, h), Image.Resampling.BICUBIC)
    if cfg.flip and flip:
        out = ImageOps.mirror(out)
    if gray:
        out = out.convert("L").convert("RGB")
    if cfg.noise_std > 0:
        pixels = np.asarray(out, dtype=np.float32)
        noise = np.random.default_rng(noise_seed).standard_normal(pixels.shape, dtype=np.float32)
        noise *= np.float32(cfg.noise_std * 255.0)
        pixels += noise
        pixels += 0.5  # round half up: astype truncates, and values are >= 0 after the clip
        np.clip(pixels, 0.0, 255.0, out=pixels)
        out = Image.fromarray(pixels.astype(np.uint8), "RGB")
    return out


def augment_prompt_images(
    prompt: list[str | Image.Image], cfg: AugmentConfig, generator: Generator
) -> tuple[list[str | Image.Image], int]:
    """Augment each image segment of `prompt` with probability `cfg.share`; returns (prompt, n_augmented).

    Text segments pass through; with share 0 the prompt is returned unchanged (same objects).
    """
    if cfg.share <= 0:
        return list(prompt), 0
    rng = as_numpy_rng(generator)
    out: list[str | Image.Image] = []
    n = 0
    for segment in prompt:
        if isinstance(segment, Image.Image) and rng.random() < cfg.share:
            out.append(augment_image(segment, cfg, rng))
            n += 1
        else:
            out.append(segment)
    return out, n
