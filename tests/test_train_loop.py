"""Training loop: overfits a fixed batch, resumes exactly, survives a torn save, stops on NaN, stage-2 init."""

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from mumu.config import load_profile
from mumu.config.train import AttnLossConfig
from mumu.errors import UserError
from mumu.train.data import Example
from mumu.train.loop import TrainingError, fingerprint, run_seed, train
from mumu.train.optim import step_generator


def _examples() -> list[Example]:
    out = []
    for i, (color, name) in enumerate([((230, 30, 30), "red"), ((30, 30, 230), "blue"), ((30, 200, 30), "green")]):
        img = np.full((64, 80, 3), 120, np.uint8)
        mask = np.zeros((64, 80), bool)
        mask[8 + 4 * i:40, 10 + 8 * i:50] = True
        img[mask] = color
        crop = PIL.Image.new("RGB", (32, 32), color)
        prompt = [f"a {name}", crop, "box"] if i < 2 else [f"a {name} box"]
        out.append(Example(f"k{i}", prompt, PIL.Image.fromarray(img), [mask] if i < 2 else []))
    return out


EXAMPLES = _examples()


def rotating(urls, stage, seed, start_step=0):
    """Batch i (global index) = examples i, i+1 (mod 3): the stream depends on position, like the loader."""
    i = start_step
    while True:
        yield [EXAMPLES[i % 3], EXAMPLES[(i + 1) % 3]]
        i += 1


def fixed(urls, stage, seed, start_step=0):
    while True:
        yield EXAMPLES[:2]


def profile(stage="tune", **kw):
    return load_profile("tiny", overrides={f"train.{stage}.{k}": v for k, v in kw.items()})


def test_overfits_a_fixed_batch(tmp_path: Path):
    logs = []
    prof = profile("pretrain", cfg_dropout=0.0, sample_every=0, checkpoint_every=100, log_every=1, warmup_steps=2,
                   max_steps=20)
    result = train("pretrain", prof, [], tmp_path, iterate=fixed, on_log=lambda s, m: logs.append((s, m)))
    # The loss of one step depends on its random timesteps: compare the model before and after training on
    # the same draws (8 seeded generators) instead.
    from models.mumu_model import MumuModel

    def loss_on_fixed_draws(model):
        with torch.no_grad():
            batch = model.prepare(EXAMPLES[:2])
            return np.mean([model.training_loss(batch, torch.Generator().manual_seed(k), AttnLossConfig())["loss"].item()
                            for k in range(8)])

    before, after = loss_on_fixed_draws(MumuModel.from_config(prof.model)), loss_on_fixed_draws(
        MumuModel.from_pretrained(tmp_path / "model"))
    assert after < 0.7 * before, (before, after)  # a clear drop, smaller than the measured one (docs/figures.md)
    assert [s for s, _ in logs] == list(range(1, 21))
    assert logs[-1][1]["loss"] == pytest.approx(result.losses[-1])
    assert set(logs[0][1]) >= {"loss", "diffusion", "attn", "grad_norm", "lr/connector", "lr/encoder", "lr/unet"}
    assert [m["lr/unet"] for _, m in logs[:4]] == pytest.approx([0.0, 5e-4, 1e-3, 1e-3])  # 2 warmup steps, then constant
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert (tmp_path / "model" / "mumu_config.json").exists()
    # the stage's prompt mode travels with the model: evaluation builds its prompts the same way
    import json

    from mumu.eval.benchmarks import checkpoint_prompt_mode

    assert json.loads((tmp_path / "model" / "training.json").read_text()) == {"stage": "pretrain", "prompt_mode": "text"}
    assert checkpoint_prompt_mode(tmp_path / "model") == "mumu"  # text-only: the benchmark keeps the names
    assert [p.name for p in result.checkpoints] == ["step-000020"]


class Interrupt(Exception):
    pass


def _stop_at(step):
    def cb(s, path):
        if s == step:
            raise Interrupt
    return cb


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    prof = profile(checkpoint_every=2, sample_every=2, log_every=1, keep_checkpoints=5, max_steps=4)
    return prof, train("tune", prof, [], out, iterate=rotating)


def test_resume_is_exact_and_ignores_a_torn_save(uninterrupted, tmp_path: Path):
    prof, full = uninterrupted
    assert len(full.losses) == 4 and len(set(full.losses)) == 4
    with pytest.raises(Interrupt):  # "killed" right after the step-2 checkpoint and preview
        train("tune", prof, [], tmp_path, iterate=rotating, on_sample=_stop_at(2))
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step-000002"]
    # a save of step 4 killed half-way (temp dir with a torn file), and a step dir without its state
    torn = ckpts / ".tmp-step-000004-x1"
    torn.mkdir()
    (torn / "weights.safetensors").write_bytes(b"\x00" * 10)
    (ckpts / "step-000003").mkdir()
    (ckpts / "step-000003" / "weights.safetensors").write_bytes(b"torn")

    samples = []
    resumed = train("tune", prof, [], tmp_path, iterate=rotating,
                    on_sample=lambda s, p: samples.append((s, p)))
    assert resumed.start_step == 2 and resumed.steps == 4
    assert not torn.exists()
    assert resumed.losses == full.losses  # exact, per step
    assert [s for s, _ in samples] == [4]
    assert samples[0][1].read_bytes() == (full.out_dir / "samples" / "step-000004.png").read_bytes()
    # the final models agree too
    import safetensors.torch as st
    a = st.load_file(str(full.model_dir / "connector" / "connector.safetensors"))
    b = st.load_file(str(resumed.model_dir / "connector" / "connector.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_another_config(uninterrupted, tmp_path: Path):
    prof, full = uninterrupted
    other = profile(checkpoint_every=2, sample_every=2, log_every=1, keep_checkpoints=5, max_steps=4, weight_decay=0.5)
    with pytest.raises(UserError, match="different stage/config"):
        train("tune", other, [], full.out_dir, iterate=rotating)


def test_max_steps_is_not_in_the_fingerprint_so_raising_it_extends_a_run(uninterrupted, tmp_path: Path):
    import shutil

    prof, full = uninterrupted
    six = profile(checkpoint_every=2, sample_every=2, log_every=1, keep_checkpoints=5, max_steps=6)
    assert fingerprint("tune", six, None) == fingerprint("tune", prof, None)
    assert fingerprint("tune", profile(max_steps=6, weight_decay=0.5), None) != fingerprint("tune", six, None)
    out = tmp_path / "run"
    shutil.copytree(full.out_dir, out)  # the finished 4-step run, extended to 6 steps
    longer = train("tune", six, [], out, iterate=rotating)
    assert (longer.start_step, longer.steps, len(longer.losses)) == (4, 6, 6)
    assert longer.losses[:4] == full.losses


def test_stage2_starts_from_stage1_model(uninterrupted, tmp_path: Path):
    from models.mumu_model import MumuModel

    _, full = uninterrupted
    prof = profile(checkpoint_every=2, sample_every=2, log_every=1, keep_checkpoints=5, max_steps=1)
    logs = []
    train("tune", prof, [], tmp_path, init=full.model_dir, iterate=rotating,
          on_log=lambda s, m: logs.append(m))
    # the first step's loss is the init model's loss on batch 0 under the step-1 generator
    model = MumuModel.from_pretrained(full.model_dir).train()
    stage = prof.train.tune
    out = model.training_loss(model.prepare(next(rotating([], stage, 0))), step_generator(run_seed(prof, "tune"), 1, 0),
                              stage.attn_loss, cfg_dropout=stage.cfg_dropout)
    assert logs[0]["loss"] == pytest.approx(out["loss"].item(), rel=1e-6)
    assert logs[0]["attn"] > 0
    with pytest.raises(UserError, match="not a saved model"):
        train("tune", prof, [], tmp_path / "x", init=tmp_path / "nowhere", iterate=rotating)
    # a model setting the init model was not built with is refused, not silently dropped
    enc = prof.model.encoder.model_copy(update={"freeze_vision": False})
    changed = prof.model_copy(update={"model": prof.model.model_copy(update={"encoder": enc})})
    with pytest.raises(UserError, match=r"another model config \(model.encoder.freeze_vision\)"):
        train("tune", changed, [], tmp_path / "y", init=full.model_dir, iterate=rotating)
    assert not (tmp_path / "y" / "model").exists()


def test_non_finite_loss_names_the_step(tmp_path: Path, monkeypatch):
    from models.mumu_model import MumuModel

    real = MumuModel.training_loss
    calls = []

    def poisoned(self, batch, generator, attn_loss: AttnLossConfig, cfg_dropout=0.0, snr_gamma=None):
        out = real(self, batch, generator, attn_loss, cfg_dropout, snr_gamma)
        calls.append(1)
        if len(calls) == 2:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(MumuModel, "training_loss", poisoned)
    with pytest.raises(TrainingError, match="step 2: loss is nan") as err:
        train("pretrain", profile("pretrain", sample_every=0, max_steps=5), [], tmp_path, iterate=fixed)
    assert err.value.step == 2
    assert not (tmp_path / "model").exists()


def test_ema_and_accumulation_resume_to_the_same_model(tmp_path: Path):
    """2 micro-batches per step and EMA: an interrupted + resumed run ends with the same (EMA) model."""
    import safetensors.torch as st

    prof = profile("pretrain", gradient_accumulation_steps=2, ema_decay=0.9, checkpoint_every=1, sample_every=1,
                   keep_checkpoints=2, max_steps=2)
    seen = []

    def spy(urls, stage, seed, start_step=0):
        seen.append(start_step)
        return rotating(urls, stage, seed, start_step)

    full = train("pretrain", prof, [], tmp_path / "a", iterate=spy)
    with pytest.raises(Interrupt):
        train("pretrain", prof, [], tmp_path / "b", iterate=spy, on_sample=_stop_at(1))
    assert (tmp_path / "b" / "checkpoints" / "step-000001" / "ema.safetensors").exists()
    resumed = train("pretrain", prof, [], tmp_path / "b", iterate=spy)
    assert resumed.start_step == 1 and resumed.losses == full.losses
    assert 2 in seen  # resumed stream starts at micro-batch 1 x 2
    a = st.load_file(str(full.model_dir / "connector" / "connector.safetensors"))
    b = st.load_file(str(resumed.model_dir / "connector" / "connector.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the final model holds the EMA weights, not the last raw ones
    raw = st.load_file(str(tmp_path / "a" / "checkpoints" / "step-000002" / "weights.safetensors"))
    assert not torch.equal(raw["connector.in_proj.weight"], a["in_proj.weight"])


def test_training_uses_its_own_thread_count_and_gives_the_process_its_own_back(tmp_path: Path):
    seen = []
    prof = load_profile("tiny", {"runtime.train_torch_threads": 2, "train.pretrain.sample_every": 0,
                               "train.pretrain.max_steps": 2})
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train("pretrain", prof, [], tmp_path, iterate=fixed,
              on_log=lambda step, metrics: seen.append(torch.get_num_threads()))
        assert seen and set(seen) == {2}
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
