"""Training checkpoints: safetensors for tensors, json for everything else, never pickle.

out_dir/checkpoints/step-000010/
    weights.safetensors     trainable parameters (named as in MumuModel.named_parameters)
    optimizer.safetensors   optimizer state tensors, flattened as "state.<param index>.<key>"
    ema.safetensors         EMA shadow weights "shadow.<i>" (only with EMA)
    rng.safetensors         torch's global CPU RNG state (the step's draws are re-derived from (seed, step))
    state.json              step, stage, config hash, optimizer param_groups and non-tensor state,
                            lr-scheduler state, EMA scalars, per-step losses so far

accelerate.save_state is not used: it pickles optimizer/scheduler/RNG state (torch.save).
A checkpoint is written into a temp dir (".tmp-step-...") and renamed into place, so a kill mid-save
leaves the previous checkpoint as the newest complete one; temp dirs are ignored and cleaned up.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from mumu.io import dumps_canonical

STATE_FILE = "state.json"
PREFIX = "step-"


@dataclass
class Checkpoint:
    step: int
    path: Path


def _flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for idx, slots in state_dict["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"state.{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def save_checkpoint(
    ckpt_dir: Path,
    step: int,
    *,
    weights: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    lr_scheduler,
    ema=None,
    extra: dict[str, Any] | None = None,
    keep: int = 3,
) -> Path:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / f"{PREFIX}{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{PREFIX}{step:06d}-", dir=ckpt_dir))
    try:
        _save(weights, tmp / "weights.safetensors")
        opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
        _save(opt_tensors, tmp / "optimizer.safetensors")
        state: dict[str, Any] = {"step": step, "optimizer": opt_meta, "lr_scheduler": lr_scheduler.state_dict(),
                                 **(extra or {})}
        if ema is not None:
            ema_state = ema.state_dict()
            shadow = ema_state.pop("shadow_params")
            _save({f"shadow.{i}": t for i, t in enumerate(shadow)}, tmp / "ema.safetensors")
            state["ema"] = ema_state
        _save({"torch_cpu": torch.get_rng_state()}, tmp / "rng.safetensors")
        (tmp / STATE_FILE).write_text(dumps_canonical(state))  # written last: marks the dir complete
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():  # re-saving a step (e.g. after a resume at it): replace
            _remove(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in list_checkpoints(ckpt_dir)[:-keep] if keep > 0 else []:
        _remove(old.path)
    return final


def _remove(path: Path) -> None:
    """Rename to a temp name, then delete: a kill mid-delete leaves a `.tmp-` folder that clean_partial removes,
    never a half-deleted checkpoint folder that no listing counts and nothing prunes."""
    doomed = path.with_name(f".tmp-removing-{path.name}")
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def list_checkpoints(ckpt_dir: Path) -> list[Checkpoint]:
    """Complete checkpoints, oldest first. Temp dirs of interrupted saves are not checkpoints."""
    out = []
    if not ckpt_dir.is_dir():
        return out
    for p in ckpt_dir.iterdir():
        if p.is_dir() and p.name.startswith(PREFIX) and (p / STATE_FILE).is_file() \
                and (p / "weights.safetensors").is_file() and (p / "optimizer.safetensors").is_file():
            try:
                out.append(Checkpoint(int(p.name[len(PREFIX):]), p))
            except ValueError:
                continue
    return sorted(out, key=lambda c: c.step)


def clean_partial(ckpt_dir: Path) -> list[Path]:
    """Remove temp dirs left by a save that was killed; returns what was removed."""
    removed = []
    if ckpt_dir.is_dir():
        for p in ckpt_dir.iterdir():
            if p.name.startswith(".tmp-"):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def load_checkpoint(path: Path, *, model, optimizer: torch.optim.Optimizer, lr_scheduler, ema=None) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler, EMA and RNG from `path`; returns state.json's content."""
    state = json.loads((path / STATE_FILE).read_text())
    model.load_trainable_state_dict(load_file(str(path / "weights.safetensors")))
    opt = _unflatten_optimizer(load_file(str(path / "optimizer.safetensors")), state["optimizer"])
    optimizer.load_state_dict(opt)
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    if ema is not None:
        if "ema" not in state:
            raise ValueError(f"{path} has no EMA state but the stage uses EMA")
        shadow = load_file(str(path / "ema.safetensors"))
        ema.load_state_dict({**state["ema"], "shadow_params": [shadow[f"shadow.{i}"] for i in range(len(shadow))]})
    torch.set_rng_state(load_file(str(path / "rng.safetensors"))["torch_cpu"])
    return state
