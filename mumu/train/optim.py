"""Optimizer (AdamW, one learning rate per module group), warmup schedule, per-step seeding, optional EMA."""

from __future__ import annotations

import numpy as np
import torch
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from mumu.config.train import StageConfig


def build_optimizer(groups: dict[str, list[torch.nn.Parameter]], stage: StageConfig) -> torch.optim.AdamW:
    """AdamW over the model's parameter groups (connector / encoder / unet), each at its stage lr."""
    lrs = stage.lr.model_dump()
    param_groups = [{"params": params, "lr": lrs[name], "name": name} for name, params in groups.items()]
    if not param_groups:
        raise ValueError("nothing to train: every part of the model is frozen")
    # foreach: one fused kernel per tensor list instead of a Python loop over parameters.
    return torch.optim.AdamW(param_groups, weight_decay=stage.weight_decay, foreach=True)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, stage: StageConfig, max_steps: int):
    return get_scheduler(stage.lr_schedule, optimizer, num_warmup_steps=stage.warmup_steps,
                         num_training_steps=max_steps)


def step_seed(seed: int, step: int, micro: int = 0, rank: int = 0) -> int:
    """A 63-bit seed for micro-batch `micro` of optimizer step `step` on process `rank`: resume needs no
    RNG state, and data-parallel processes draw different noise."""
    state = np.random.SeedSequence([seed, step, micro, rank]).generate_state(2, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))


def step_generator(seed: int, step: int, micro: int = 0, rank: int = 0) -> torch.Generator:
    """The CPU generator every draw of one micro-batch comes from (CFG dropout, posterior, t, noise).

    Also seeds torch's global RNG with the same value, so modules that draw from it (dropout) are
    reproducible on resume too."""
    s = step_seed(seed, step, micro, rank)
    torch.manual_seed(s)
    return torch.Generator().manual_seed(s)


def build_ema(params: list[torch.nn.Parameter], decay: float):
    return EMAModel(params, decay=decay)
