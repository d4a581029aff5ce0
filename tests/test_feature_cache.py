"""The feature cache: training from cached frozen outputs gives the losses of training from pixels; a cache of
another model config is refused; the stage skips finished sidecars, resumes a killed run and reconciles counts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from mumu.cli import main
from mumu.config import load_profile
from mumu.data import stages
from mumu.data.shards import shard_urls
from mumu.errors import UserError
from mumu.train import feature_stage
from mumu.train.features import cache_dir, cache_spec, find_cache, spec_key
from mumu.train.loop import train
from models.encoder import PromptEncoder
from tests.scenes import write_scene_folder

QUIET = {"data.ingest.images_per_shard": 4, "train.tune.sample_every": 0, "train.tune.checkpoint_every": 100,
         "train.tune.batch_size": 2}
# The tiny profile trains the encoder's LoRA, so its vision tower and VAE are the frozen parts; crop augmentation
# on half the prompt images mixes cached and computed images in one batch.
VISION = {**QUIET, "train.tune.augment.share": 0.5}
# UNIMO-G's recipe: the whole encoder frozen, so the prompts' hidden states are cached (text-only steps included);
# no crop augmentation (UNIMO-G has none, and an augmented image's prompt is computed from pixels).
PROMPT = {**QUIET, "model.encoder.train_language_model": "frozen", "model.encoder.lora.enabled": False,
          "train.tune.prompt_mode": "unimo", "train.tune.text_only_share": 0.5, "train.tune.augment.share": 0.0}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Eight ground-truth emoji scenes in two data shards (oracle boxes and masks: every sample has entities)."""
    src, out = tmp_path_factory.mktemp("scenes"), tmp_path_factory.mktemp("data")
    oracle = write_scene_folder(src, range(700, 708))
    manifest, _ = stages.run_local(src, out, load_profile("tiny", QUIET).data, None, oracle, oracle, "test")
    assert manifest.written == 8 and len(manifest.shards) == 2
    return out


def _count_calls(monkeypatch):
    """Images through the vision tower, VAE encodes, and language-model rows of non-empty prompts."""
    import models.decoder as decoder

    seen = {"tower_images": 0, "vae": 0, "prompt_rows": 0}
    tower, lm, vae = PromptEncoder.vision_tower, PromptEncoder._language_model, decoder.vae_posterior

    def count_tower(self, pixel_values, pixel_mask):
        seen["tower_images"] += pixel_values.shape[0]
        return tower(self, pixel_values, pixel_mask)

    def count_lm(self, ids, mask, feats):
        seen["prompt_rows"] += int((mask.sum(-1) > 1).sum())  # the empty prompt (CFG) is one token
        return lm(self, ids, mask, feats)

    def count_vae(v, pixels):
        seen["vae"] += pixels.shape[0]
        return vae(v, pixels)

    monkeypatch.setattr(PromptEncoder, "vision_tower", count_tower)
    monkeypatch.setattr(PromptEncoder, "_language_model", count_lm)
    monkeypatch.setattr(decoder, "vae_posterior", count_vae)
    return seen


@pytest.mark.parametrize("overrides, parts", [
    (VISION, ["latents", "vision"]), (PROMPT, ["latents", "prompt"]),
    ({**VISION, "train.tune.loader_workers": 2}, ["latents", "vision"]),  # the cache handed to loader workers
], ids=["vision", "prompt", "vision-2-loader-workers"])
def test_training_from_the_cache_gives_the_losses_of_training_from_pixels(data, tmp_path, monkeypatch, overrides,
                                                                           parts):
    cfg = load_profile("tiny", overrides)
    manifest = feature_stage.run_local(data, cfg.model, cfg.train)
    assert list(manifest.spec["parts"]) == parts
    runs, calls, lines = {}, {}, []
    for use in ("off", "require"):
        seen = _count_calls(monkeypatch)
        prof = load_profile("tiny", {**overrides, "train.features.use": use, "train.tune.max_steps": 4})
        runs[use] = train("tune", prof, shard_urls(data), tmp_path / use, on_info=lines.append).losses
        calls[use] = dict(seen)
        monkeypatch.undo()
    assert runs["require"] == pytest.approx(runs["off"], rel=1e-5, abs=1e-6)
    assert len(set(runs["off"])) == 4  # four different batches, so equal lists are not an accident
    assert lines[0].startswith("feature cache off") and lines[1].startswith(f"feature cache {manifest.key}")
    off, cached = calls["off"], calls["require"]
    assert off["vae"] == 8 and cached["vae"] == 0  # 4 steps x batch 2: no target went through the VAE
    if "vision" in parts:  # only the augmented crops went through the tower
        assert 0 < cached["tower_images"] < off["tower_images"] and cached["prompt_rows"] == off["prompt_rows"]
    else:  # no prompt went through the encoder, and the text-only steps read their cached states too
        assert off["prompt_rows"] == 8 and cached["prompt_rows"] == 0 and cached["tower_images"] == 0
        assert {"prompt/text", "prompt/unimo"} <= set(manifest.shards[0].tensors)


def test_a_cache_written_by_another_model_config_is_refused(data, tmp_path):
    cfg = load_profile("tiny", VISION)
    manifest = feature_stage.run_local(data, cfg.model, cfg.train)
    other = load_profile("tiny", {**VISION, "model.encoder.model.seed": 99})  # another vision tower
    other_key = spec_key(cache_spec(other.model, other.train))
    assert other_key != manifest.key
    # Looked up by its own key, the other model finds no cache and says why; "require" makes that an error.
    cache, line = find_cache(shard_urls(data), other.model, other.train)
    assert cache is None and manifest.key in line and "another model config, refused" in line
    strict = load_profile("tiny", {**VISION, "model.encoder.model.seed": 99, "train.features.use": "require"})
    with pytest.raises(UserError, match="'require'") as info:
        find_cache(shard_urls(data), strict.model, strict.train)
    assert "\n" not in str(info.value)
    # A cache put under the other key's name (copied, renamed) is refused, in one line, naming both configs.
    copied = cache_dir(data, other_key)
    shutil.copytree(cache_dir(data, manifest.key), copied)
    try:
        with pytest.raises(UserError) as info:
            train("tune", load_profile("tiny", {**VISION, "model.encoder.model.seed": 99, "train.tune.max_steps": 1}),
                  shard_urls(data), tmp_path / "run")
        message = str(info.value)
        assert "\n" not in message and manifest.key in message and other_key in message and "refusing" in message
    finally:
        shutil.rmtree(copied)


def test_a_sidecar_swapped_inside_the_cache_is_refused_by_the_loader(data, tmp_path):
    cfg = load_profile("tiny", VISION)
    manifest = feature_stage.run_local(data, cfg.model, cfg.train)
    other = load_profile("tiny", {**VISION, "model.encoder.model.seed": 98})
    side = feature_stage.run_local(data, other.model, other.train)
    folder = tmp_path / "data"
    shutil.copytree(data, folder)
    # The report says the right key, the tar holds the other model's features (same size: same shapes).
    name = manifest.shards[0].name
    shutil.copy(cache_dir(data, side.key) / name, cache_dir(folder, manifest.key) / name)
    with pytest.raises(UserError, match=f"features of model config {side.key}, not {manifest.key}") as info:
        train("tune", load_profile("tiny", {**VISION, "train.tune.batch_size": 8, "train.tune.max_steps": 2}),
              shard_urls(folder), tmp_path / "run")
    assert "\n" not in str(info.value)


def test_the_stage_skips_finished_sidecars_resumes_a_killed_run_and_reconciles(data, monkeypatch):
    cfg = load_profile("tiny", VISION)
    first = feature_stage.run_local(data, cfg.model, cfg.train)
    folder = cache_dir(data, first.key)
    data_manifest = json.loads((data / "manifest.json").read_text())
    assert first.samples == data_manifest["written"] == 8
    assert [(s.name, s.samples) for s in first.shards] == [(s["name"], s["written"]) for s in data_manifest["shards"]]
    assert all(s.tensors["posterior"] == s.samples and s.tensors["vision"] > 0 for s in first.shards)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def fail(*args, **kwargs):
        raise AssertionError("recomputed a finished sidecar")

    with monkeypatch.context() as m:  # finished: nothing is computed again, nothing changes
        m.setattr(feature_stage.FrozenParts, "compute", fail)
        feature_stage.run_local(data, cfg.model, cfg.train)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    # What a run killed while writing shard 1 leaves: shard 0 finished, shard 1 without its report, a torn temp.
    (folder / "shard-00001.report.json").unlink()
    (folder / ".shard-00001.tar.123.tmp").write_bytes(b"torn")
    computed = []
    real = feature_stage.FrozenParts.compute
    monkeypatch.setattr(feature_stage.FrozenParts, "compute",
                        lambda self, samples, n: computed.append(len(samples)) or real(self, samples, n))
    again = feature_stage.run_local(data, cfg.model, cfg.train)
    assert computed == [4]  # only shard 1's samples
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # deterministic: byte-identical
    assert again == first
    # Training finds it for the data folder given as a directory too (the loader lists its shards).
    cache, line = find_cache([str(data)], cfg.model, cfg.train)
    assert sorted(cache.sidecars.values()) == [str(folder / s.name) for s in first.shards] and first.key in line


def test_cli_cache_features_without_data_is_one_line(tmp_path, capsys):
    assert main(["cache-features", "--data", str(tmp_path / "nothing")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("mumu: error:") and "manifest.json not found" in err[0]


def _key(overrides: dict) -> str:
    cfg = load_profile("tiny", overrides)
    return spec_key(cache_spec(cfg.model, cfg.train))


@pytest.mark.parametrize("base, field, value", [
    (VISION, "model.decoder.vae.dtype", "bfloat16"), (VISION, "model.decoder.resolution", 32),
    (VISION, "model.decoder.vae", {"config": {}, "seed": 3}), (VISION, "model.encoder.model.seed", 11),
    (VISION, "model.encoder.model.dtype", "bfloat16"), (VISION, "train.tune.prompt_mode", "unimo"),
    (PROMPT, "model.encoder.image_feature_norm", "none"), (PROMPT, "model.encoder.bypass_resampler", False),
    (PROMPT, "model.encoder.image_tokens", 9), (PROMPT, "model.encoder.max_text_tokens", 48),
    (PROMPT, "train.tune.prompt_mode", "mumu"), (PROMPT, "model.encoder.model.seed", 11),
])
def test_the_key_changes_with_every_value_the_cached_outputs_depend_on(base, field, value):
    assert _key({**base, field: value}) != _key(base)


@pytest.mark.parametrize("base, field, value", [
    (VISION, "train.tune.lr.unet", 0.5), (VISION, "model.connector.layers", 2), (VISION, "train.features.use", "off"),
    (VISION, "train.features.batch_size", 3), (VISION, "model.encoder.image_tokens", 9),
    (VISION, "model.encoder.gradient_checkpointing", True), (PROMPT, "model.encoder.padding_side", "left"),
    (PROMPT, "model.decoder.unet.seed", 9), (PROMPT, "train.tune.augment.share", 0.2),
])
def test_the_key_ignores_what_the_cached_outputs_do_not_depend_on(base, field, value):
    assert _key({**base, field: value}) == _key(base)


def test_a_refitted_bundled_vae_gets_another_key(tmp_path, monkeypatch):
    import mumu.config.base as base

    shutil.copytree(base.BUNDLED_DIR / "tiny_vae", tmp_path / "tiny_vae")
    monkeypatch.setattr(base, "BUNDLED_DIR", tmp_path)
    before = _key(VISION)
    weights = tmp_path / "tiny_vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    assert _key(VISION) != before


@pytest.mark.parametrize("augment, loads", [(0.0, False), (0.5, True)], ids=["complete", "augmented-prompts"])
def test_a_prompt_cache_trains_without_loading_the_encoder(data, tmp_path, monkeypatch, augment, loads):
    """UNIMO-G's recipe under a prompt cache: with every prompt cached, no step, CFG-dropped sample or preview loads
    the frozen encoder (an augmented prompt, which the cache lacks, loads it then); the losses, previews and final
    model are those of a run that computes every prompt."""
    from models.mumu_model import MumuModel

    over = {**PROMPT, "train.tune.sample_every": 2, "train.tune.sample_steps": 2, "train.tune.cfg_dropout": 0.5,
            "train.tune.augment.share": augment}
    cfg = load_profile("tiny", over)
    feature_stage.run_local(data, cfg.model, cfg.train)
    loaded_at_save, real_save = {}, MumuModel.save_pretrained

    def save(self, directory):
        loaded_at_save[use] = self.encoder.loaded
        real_save(self, directory)

    monkeypatch.setattr(MumuModel, "save_pretrained", save)
    runs, lines = {}, []
    for use in ("off", "require"):
        prof = load_profile("tiny", {**over, "train.features.use": use, "train.tune.max_steps": 4})
        runs[use] = train("tune", prof, shard_urls(data), tmp_path / use, on_info=lines.append)
    assert loaded_at_save == {"off": True, "require": loads}
    assert lines[1].endswith("the prompt encoder is not loaded")
    loaded_lines = [ln for ln in lines if ln.endswith("loaded the prompt encoder")]
    assert len(loaded_lines) == int(loads) and all(ln.startswith("step ") for ln in loaded_lines)
    assert runs["require"].losses == pytest.approx(runs["off"].losses, rel=1e-5, abs=1e-6)
    assert len(runs["off"].samples) == len(runs["require"].samples) == 2
    for off, cached in zip(runs["off"].samples, runs["require"].samples):
        a, b = (np.asarray(PIL.Image.open(p), dtype=np.int16) for p in (off, cached))
        assert a.shape == b.shape and np.abs(a - b).max() <= 2 and a.std() > 0
    # The final model: the encoder saved from the weights loaded at save time is the eager run's, byte for byte.
    enc = [(runs[u].model_dir / "encoder" / "model.safetensors").read_bytes() for u in ("off", "require")]
    assert enc[0] == enc[1]
    models = [MumuModel.from_pretrained(runs[u].model_dir) for u in ("off", "require")]
    for (name, p), (_, q) in zip(models[0].connector.state_dict().items(), models[1].connector.state_dict().items()):
        # Adam's steps here are ~1.5e-4 a weight: equal to a tenth of one step (cached states agree to float error).
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-5), name
    # A saved model read lazily (the next stage's init) loads its encoder on the first prompt, to the same states.
    lazy = MumuModel.from_pretrained(runs["off"].model_dir, lazy_encoder=True)
    prompt = [["a", PIL.Image.new("RGB", (40, 30), (200, 40, 90)), "cat"]]
    assert not lazy.encoder.loaded
    with torch.no_grad():
        got, want = lazy.encode(prompt), models[0].encode(prompt)
    assert lazy.encoder.loaded and torch.equal(got.hidden, want.hidden) and got.hidden.abs().sum() > 0


def test_a_prompt_cache_without_the_empty_prompt_is_incomplete(data, tmp_path):
    """The empty prompt's states are part of a prompt cache: without them training would need the encoder."""
    cfg = load_profile("tiny", {**PROMPT, "train.features.use": "require"})
    manifest = feature_stage.run_local(data, cfg.model, cfg.train)
    cache, _ = find_cache(shard_urls(data), cfg.model, cfg.train)
    assert cache.has_prompts and Path(cache.empty_prompt).is_file()
    Path(cache.empty_prompt).unlink()
    with pytest.raises(UserError, match="empty_prompt.safetensors is missing"):
        find_cache(shard_urls(data), cfg.model, cfg.train)
    with pytest.raises(ValueError, match="no valid empty_prompt"):
        feature_stage.write_cache_manifest(feature_stage.plan_cache(data, cfg.model, cfg.train), manifest.shards)
    feature_stage.run_local(data, cfg.model, cfg.train)  # a re-run writes it again, every sidecar kept
    assert find_cache(shard_urls(data), cfg.model, cfg.train)[0].has_prompts
