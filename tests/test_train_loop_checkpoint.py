"""Checkpoint files: optimizer state survives the safetensors+json flattening; a save that dies half-way
leaves the previous checkpoint as the newest and no debris."""

import json
from pathlib import Path

import pytest
import torch

import mumu.train.checkpoint as ckpt
from mumu.config.train import StageConfig
from mumu.train.optim import build_lr_scheduler, build_optimizer


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Linear(3, 4)
        self.b = torch.nn.Linear(4, 2)

    def trainable_state_dict(self):
        return {n: p.detach() for n, p in self.named_parameters()}

    def load_trainable_state_dict(self, sd):
        self.load_state_dict(sd)


def _setup(seed=0):
    torch.manual_seed(seed)
    model = Toy()
    stage = StageConfig(warmup_steps=3)
    opt = build_optimizer({"connector": list(model.a.parameters()), "unet": list(model.b.parameters())}, stage)
    sched = build_lr_scheduler(opt, stage, 10)
    return model, opt, sched


def _train(model, opt, sched, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss = model.b(model.a(torch.randn(5, 3, generator=g))).square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        sched.step()


def test_round_trip_continues_identically(tmp_path: Path):
    model, opt, sched = _setup()
    _train(model, opt, sched, 2)
    path = ckpt.save_checkpoint(tmp_path, 2, weights=model.trainable_state_dict(), optimizer=opt, lr_scheduler=sched,
                                extra={"note": "x"})
    assert sorted(p.name for p in path.iterdir()) == ["optimizer.safetensors", "rng.safetensors", "state.json",
                                                      "weights.safetensors"]
    state = json.loads((path / "state.json").read_text())
    assert state["step"] == 2 and state["note"] == "x"
    assert [g["name"] for g in state["optimizer"]["param_groups"]] == ["connector", "unet"]

    model2, opt2, sched2 = _setup(seed=5)  # different init: everything must come from the checkpoint
    ckpt.load_checkpoint(path, model=model2, optimizer=opt2, lr_scheduler=sched2)
    assert sched2.get_last_lr() == sched.get_last_lr()
    _train(model, opt, sched, 3, seed=7)
    _train(model2, opt2, sched2, 3, seed=7)
    for (n, p), (_, q) in zip(model.named_parameters(), model2.named_parameters()):
        assert torch.equal(p, q), n


def test_save_killed_half_way_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch):
    model, opt, sched = _setup()
    _train(model, opt, sched, 1)
    good = ckpt.save_checkpoint(tmp_path, 1, weights=model.trainable_state_dict(), optimizer=opt, lr_scheduler=sched)
    _train(model, opt, sched, 1)
    real, calls = ckpt.save_file, []

    def dies_on_second_file(tensors, path):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if killed while writing optimizer.safetensors
        real(tensors, path)

    monkeypatch.setattr(ckpt, "save_file", dies_on_second_file)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 2, weights=model.trainable_state_dict(), optimizer=opt, lr_scheduler=sched)
    assert [c.step for c in ckpt.list_checkpoints(tmp_path)] == [1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [good.name]  # temp dir removed
    # a hard kill cannot run cleanup: a leftover temp dir is not a checkpoint, and clean_partial removes it
    (tmp_path / ".tmp-step-000002-abc").mkdir()
    (tmp_path / ".tmp-step-000002-abc" / "weights.safetensors").write_bytes(b"\0")
    assert [c.step for c in ckpt.list_checkpoints(tmp_path)] == [1]
    assert [p.name for p in ckpt.clean_partial(tmp_path)] == [".tmp-step-000002-abc"]
    model2, opt2, sched2 = _setup(seed=3)
    ckpt.load_checkpoint(good, model=model2, optimizer=opt2, lr_scheduler=sched2)  # still loads


def test_keep_prunes_oldest(tmp_path: Path):
    model, opt, sched = _setup()
    for step in range(1, 5):
        ckpt.save_checkpoint(tmp_path, step, weights=model.trainable_state_dict(), optimizer=opt, lr_scheduler=sched,
                             keep=2)
    assert [c.step for c in ckpt.list_checkpoints(tmp_path)] == [3, 4]
