"""The outputs of a model's frozen parts, read from the feature cache instead of computed from pixels.

The cache-features stage (mumu/train/features.py) computes them once per sample; the training loader attaches
them to each example, aligned with the prompt the example was given (so an augmented image has none). The model
uses what is there and computes the rest from pixels: a step takes the same values either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CachedFeatures:
    # [2C, h, w]: the VAE posterior of the training target (mean and log-variance, as AutoencoderKL returns them),
    # so training still draws its latent sample from it.
    posterior: torch.Tensor | None = None
    # Per image segment of the prompt, in order: the frozen vision tower's output on the image's valid patch
    # grid [rows, cols, vision width]; None where the image must be computed from pixels (e.g. it was augmented).
    images: tuple[torch.Tensor | None, ...] = ()
    # The whole (frozen) encoder's hidden states of exactly this prompt [L, D], and the token ids they belong to
    # (checked against the tokenizer's, so a cache from another tokenizer cannot be read).
    prompt: torch.Tensor | None = None
    prompt_ids: torch.Tensor | None = None


def pad_grids(grids: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image patch grids [rows, cols, D] -> ([N, Hp*Wp, D] padded bottom/right with zeros, [N, Hp, Wp] bool
    mask of the real patches): the layout the vision tower gives a padded batch."""
    hp, wp = max(g.shape[0] for g in grids), max(g.shape[1] for g in grids)
    first = grids[0]
    vis = first.new_zeros((len(grids), hp, wp, first.shape[-1]))
    mask = torch.zeros((len(grids), hp, wp), dtype=torch.bool, device=first.device)
    for i, g in enumerate(grids):
        vis[i, : g.shape[0], : g.shape[1]] = g
        mask[i, : g.shape[0], : g.shape[1]] = True
    return vis.view(len(grids), hp * wp, -1), mask
