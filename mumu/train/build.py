"""What a training stage runs with, built before its first step: the accelerator, the model with its optimizer,
LR schedule and EMA, and the TensorBoard writer. mumu/train/loop.py runs the steps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from torch.utils.tensorboard import SummaryWriter

from models.mumu_model import MumuModel
from mumu.config.model import ModelConfig
from mumu.config.runtime import RuntimeConfig
from mumu.config.train import StageConfig
from mumu.devices import runtime_device
from mumu.train.optim import build_ema, build_lr_scheduler, build_optimizer


def make_accelerator(runtime: RuntimeConfig, stage: StageConfig) -> Accelerator:
    """The stage's accelerator, on CPU unless runtime.device resolves to cuda (mumu.devices: not strict, so a
    cuda request without CUDA fails where the accelerator puts the model there). runtime_device also applies
    runtime.torch_threads: the training loop sets its own thread count after this."""
    device = runtime_device(runtime, strict=False)
    # find_unused_parameters: a text-only batch leaves the modality projection's LoRA without gradient.
    return Accelerator(mixed_precision=stage.mixed_precision,
                       gradient_accumulation_steps=stage.gradient_accumulation_steps, cpu=device.type == "cpu",
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


@dataclass
class Trainee:
    """The model a stage trains and what steps it, prepared by the accelerator."""

    accelerator: Accelerator
    model: torch.nn.Module  # what the forward runs through (wrapped for the processes when there are several)
    core: MumuModel  # the model itself: batches, trainable weights, previews, the final save
    optimizer: Any
    lr_scheduler: Any
    ema: Any | None
    trainable: list[torch.nn.Parameter]


def build_trainee(accelerator: Accelerator, model_cfg: ModelConfig, stage: StageConfig, total: int,
                  init: str | Path | None, lazy_encoder: bool) -> Trainee:
    """The model from init (a saved model directory) or from the config, on the accelerator's device in training
    mode, with its optimizer, an LR schedule over `total` steps and EMA if the stage asks for it."""
    model = (MumuModel.from_pretrained(init, lazy_encoder=lazy_encoder) if init is not None
             else MumuModel.from_config(model_cfg, lazy_encoder=lazy_encoder))
    model.to(accelerator.device)
    model.train()
    groups = model.parameter_groups()
    trainable = [p for params in groups.values() for p in params]
    optimizer = build_optimizer(groups, stage)
    lr_scheduler = build_lr_scheduler(optimizer, stage, total)
    ema = build_ema(trainable, stage.ema_decay) if stage.ema_decay else None
    model, optimizer = accelerator.prepare(model, optimizer)
    return Trainee(accelerator, model, accelerator.unwrap_model(model), optimizer, lr_scheduler, ema, trainable)


def open_writer(out_dir: Path, start: int) -> SummaryWriter:
    """TensorBoard scalars in out_dir/tb; purge_step drops what a killed run logged after the step it resumes from."""
    return SummaryWriter(str(out_dir / "tb"), purge_step=start + 1)
