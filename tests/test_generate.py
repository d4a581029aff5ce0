"""mumu.generate: MumuSampler (DDIM / Euler, classifier-free guidance, per-image seeds) and generate_to_file,
on the tiny profile's model built from config and saved with save_pretrained (no training)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from mumu.config import load_profile
from mumu.config.eval import SamplerConfig
from mumu.errors import UserError
from mumu.generate import MumuSampler, build_scheduler, generate_to_file, output_paths
from models.mumu_model import MumuModel

RED = PIL.Image.new("RGB", (40, 32), (220, 30, 30))
BLUE = PIL.Image.new("RGB", (36, 36), (30, 30, 220))
GREEN = PIL.Image.new("RGB", (24, 48), (30, 200, 30))
CFG = SamplerConfig(steps=2, guidance_scale=3.0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("gen") / "model"
    MumuModel.from_config(load_profile("tiny").model).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def sampler(model_dir) -> MumuSampler:
    return MumuSampler.from_checkpoint(model_dir, CFG)


def px(image: PIL.Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def to_pixels(latents: torch.Tensor, model) -> np.ndarray:
    """Scaled latents -> uint8-valued HWC array, the way the sampler's output is quantised."""
    x = model.decoder.decode_latents(latents)[0].float()
    return ((x / 2 + 0.5).clamp(0, 1) * 255).round().permute(1, 2, 0).numpy().astype(np.int16)


# --- outputs, seeds, batching -------------------------------------------------------------------------------
def test_output_count_size_mode(sampler):
    images = sampler.generate(["a cat on a", RED], n=3, seed=0)
    assert len(images) == 3 and all(im.mode == "RGB" and im.size == (64, 64) for im in images)
    wide = sampler.generate(["a cat"], n=1, seed=0, height=32, width=48)
    assert len(wide) == 1 and wide[0].size == (48, 32)
    batch = sampler.generate_batch([["a cat"], [], ["a", RED, "and a", BLUE]], n=2, seed=0)
    assert [len(b) for b in batch] == [2, 2, 2]
    assert all(px(im).std() > 1 for b in batch for im in b)  # real decoded pictures, not constant fills


def test_same_seed_identical_different_seed_different(sampler):
    a = sampler.generate(["a cat on a", RED], n=2, seed=11)
    b = sampler.generate(["a cat on a", RED], n=2, seed=11)
    c = sampler.generate(["a cat on a", RED], n=2, seed=12)
    assert all(np.array_equal(px(x), px(y)) for x, y in zip(a, b))
    assert np.abs(px(a[0]) - px(a[1])).mean() > 5  # image 0 and 1 use different seeds
    assert np.array_equal(px(a[1]), px(c[0]))  # image i is seed + i: seed 12's first == seed 11's second


def test_batch_equals_single(model_dir, sampler):
    prompts = [["a dog"], ["a cat on a", RED], ["a", RED, "and a", BLUE, "in snow"]]
    # batch_size 4 with 3 prompts x 2 images: chunks straddle prompts and pad to different lengths.
    batched = MumuSampler(sampler.model, CFG.model_copy(update={"batch_size": 4})).generate_batch(prompts, n=2, seed=5)
    for prompt, got in zip(prompts, batched):
        alone = [sampler.generate(prompt, n=1, seed=5 + i)[0] for i in range(2)]
        for x, y in zip(got, alone):
            assert np.abs(px(x) - px(y)).max() <= 1  # equal up to float rounding of padded batches
    per_prompt = sampler.generate_batch(prompts[:2], n=1, seed=[3, 9])
    assert np.abs(px(per_prompt[1][0]) - px(sampler.generate(prompts[1], seed=9)[0])).max() <= 1
    with pytest.raises(UserError, match="2 seeds for 3 prompts"):
        sampler.generate_batch(prompts, seed=[1, 2])


@pytest.mark.parametrize("images", [[], [RED], [RED, BLUE]])
def test_prompts_with_0_1_2_images(sampler, images):
    def prompt(imgs):
        out = ["a photo of"]
        for im in imgs:
            out += [im, "and"]
        return out + ["a table"]

    got = sampler.generate(prompt(images), n=1, seed=4)
    assert len(got) == 1 and got[0].size == (64, 64)
    if images:  # the images reach the output: other images, other picture
        other = sampler.generate(prompt([GREEN] * len(images)), n=1, seed=4)
        assert np.abs(px(got[0]) - px(other[0])).mean() > 0.5
    else:
        assert np.abs(px(got[0]) - px(sampler.generate(["a photo of a chair"], seed=4)[0])).mean() > 0.5


def test_transparent_prompt_images_sit_on_white(sampler):
    rgba = PIL.Image.new("RGBA", (32, 32), (0, 0, 0, 0))  # transparent black everywhere...
    rgba.paste((220, 30, 30, 255), (8, 8, 24, 24))  # ...but a red square
    flat = PIL.Image.new("RGB", (32, 32), "white")
    flat.paste((220, 30, 30), (8, 8, 24, 24))
    got = px(sampler.generate(["a", rgba], seed=1)[0])
    assert np.array_equal(got, px(sampler.generate(["a", flat], seed=1)[0]))
    assert not np.array_equal(got, px(sampler.generate(["a", rgba.convert("RGB")], seed=1)[0]))


def test_long_prompt_drops_images_with_a_warning(sampler, caplog):
    prompt = [x for _ in range(12) for x in (RED, "and")]  # 12 x (4 image tokens + 2 boundaries) > 64 tokens
    with caplog.at_level(logging.WARNING, logger="mumu.generate"):
        assert len(sampler.generate(prompt, seed=0)) == 1
    assert "dropped" in caplog.text and "max_text_tokens=64" in caplog.text


# --- classifier-free guidance -------------------------------------------------------------------------------
def test_uncond_is_the_trainers_empty_condition(sampler):
    model = sampler.model
    with torch.no_grad():
        cond, uncond = sampler.encode([["a", RED, "on a table"], ["a cat"]], None, guided=True)
        empty = model.encode([[]])
    length = cond.hidden.shape[1]
    assert uncond.hidden.shape == cond.hidden.shape and empty.hidden.shape[1] == 1
    for b in range(2):  # the one-token empty prompt, right-padded with masked zeros, its own pooled vector
        assert torch.equal(uncond.attention_mask[b], torch.tensor([1] + [0] * (length - 1)))
        torch.testing.assert_close(uncond.hidden[b, :1], empty.hidden[0])
        assert torch.count_nonzero(uncond.hidden[b, 1:]) == 0
        torch.testing.assert_close(uncond.pooled[b], empty.pooled[0])
    # For the empty prompt cond == uncond, so any guidance scale gives the unguided picture (up to one grey
    # level: the guided pass runs the UNet on a batch of two, whose float rounding differs).
    a = sampler.generate([], seed=2, guidance_scale=9.0)[0]
    assert np.abs(px(a) - px(sampler.generate([], seed=2, guidance_scale=1.0)[0])).max() <= 1


def test_guidance_one_is_the_cond_only_loop(sampler):
    model, prompt, seed = sampler.model, ["a cat on a", RED], 21
    with torch.no_grad():
        cond = model.encode([prompt])
        sched = build_scheduler(CFG, model.scheduler_config)
        sched.set_timesteps(CFG.steps)
        x = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(seed)) * sched.init_noise_sigma
        for t in sched.timesteps:
            x = sched.step(model.predict(sched.scale_model_input(x, t), t, cond, model.add_time_ids(1)), t, x).prev_sample
        expected = to_pixels(x, model)
    one = px(sampler.generate(prompt, seed=seed, guidance_scale=1.0)[0])
    assert np.abs(one - expected).max() <= 1
    assert np.array_equal(one, px(sampler.generate(prompt, seed=seed, guidance_scale=0.5)[0]))  # <= 1: unguided


def test_cfg_combination_matches_manual_one_step(sampler):
    """One DDIM step from t=999 to alpha=1 is x0 = sqrt(a) x - sqrt(1-a) v with v = u + s (c - u) (the tiny
    profile predicts v), u and c from separate predict() calls on the unpadded encodings."""
    model, prompt, seed, s = sampler.model, ["a", RED, "on a", BLUE], 8, 6.0
    with torch.no_grad():
        x = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(seed))
        t = torch.tensor(999)
        ids = model.add_time_ids(1)
        c = model.predict(x, t, model.encode([prompt]), ids)
        u = model.predict(x, t, model.encode([[]]), ids)
        a = model.decoder.scheduler.alphas_cumprod[999]
        assert model.decoder.scheduler.config.prediction_type == "v_prediction"
        x0 = a.sqrt() * x - (1 - a).sqrt() * (u + s * (c - u))
        expected, unguided = to_pixels(x0, model), to_pixels(a.sqrt() * x - (1 - a).sqrt() * c, model)
    got = px(sampler.generate(prompt, seed=seed, steps=1, guidance_scale=s)[0])
    assert np.abs(got - expected).max() <= 1
    assert np.abs(expected - unguided).mean() > 3  # guidance changes the picture: the check has teeth


def test_negative_prompt_replaces_the_uncond(sampler):
    prompt = ["a cat on a", RED]
    plain = px(sampler.generate(prompt, seed=1, guidance_scale=5.0)[0])
    neg = px(sampler.generate(prompt, seed=1, guidance_scale=5.0, negative=["a dog"])[0])
    assert np.abs(plain - neg).mean() > 1
    # negative = the empty prompt is the default uncond (padded by the tokenizer instead of drop_condition)
    assert np.abs(plain - px(sampler.generate(prompt, seed=1, guidance_scale=5.0, negative=[])[0])).max() <= 1


# --- schedulers --------------------------------------------------------------------------------------------
def test_schedulers_keep_the_training_noise_schedule(sampler):
    train = sampler.model.decoder.scheduler
    for name in ("ddim", "euler"):
        sched = build_scheduler(SamplerConfig(name=name, steps=4), sampler.model.scheduler_config)
        torch.testing.assert_close(sched.alphas_cumprod, train.alphas_cumprod)
        assert sched.config.prediction_type == train.config.prediction_type == "v_prediction"
        assert sched.config.rescale_betas_zero_snr == train.config.rescale_betas_zero_snr is True
        assert sched.config.timestep_spacing == "trailing"
        sched.set_timesteps(4)
        assert [int(t) for t in sched.timesteps] == [999, 749, 499, 249]
        eps = build_scheduler(SamplerConfig(name=name), {**sampler.model.scheduler_config, "prediction_type": "epsilon",
                                                         "rescale_betas_zero_snr": False})
        assert eps.config.prediction_type == "epsilon" and eps.alphas_cumprod[-1] > 1e-3
    assert build_scheduler(SamplerConfig(), sampler.model.scheduler_config).config.clip_sample is False


def test_ddim_and_euler_both_run_and_agree(sampler):
    """Deterministic DDIM is Euler's method on the probability-flow ODE in sigma space (Karras et al. 2022),
    so with the same timesteps the two samplers differ only by float rounding; a missing input scaling or
    init sigma in either path would show as a large difference."""
    euler = MumuSampler(sampler.model, CFG.model_copy(update={"name": "euler"}))
    d, e = px(sampler.generate(["a cat"], seed=3)[0]), px(euler.generate(["a cat"], seed=3)[0])
    assert np.abs(d - e).max() <= 2
    leading = MumuSampler(sampler.model, CFG.model_copy(update={"timestep_spacing": "leading"}))
    assert np.abs(d - px(leading.generate(["a cat"], seed=3)[0])).mean() > 2  # the spacing reaches the sampler


# --- errors ------------------------------------------------------------------------------------------------
def test_bad_sizes_and_arguments(sampler):
    for kwargs in ({"height": 30}, {"width": 66}, {"height": 0}, {"width": 2}):
        with pytest.raises(UserError, match="multiple of the VAE scale factor 4"):
            sampler.generate(["a cat"], **kwargs)
    with pytest.raises(UserError, match="n must be a positive integer"):
        sampler.generate(["a cat"], n=0)
    with pytest.raises(UserError, match="steps"):
        sampler.generate(["a cat"], steps=0)
    with pytest.raises(UserError, match="text or a PIL image"):
        sampler.generate(["a cat", 3])


def test_checkpoint_paths(tmp_path, model_dir, sampler):
    with pytest.raises(UserError, match="does not exist"):
        MumuSampler.from_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no mumu_config.json"):
        MumuSampler.from_checkpoint(tmp_path / "empty")
    (tmp_path / "unfinished" / "checkpoints" / "step-000010").mkdir(parents=True)
    with pytest.raises(UserError, match="without a final model"):
        MumuSampler.from_checkpoint(tmp_path / "unfinished")
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "mumu_config.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot load the model") as err:
        MumuSampler.from_checkpoint(broken)
    assert "\n" not in str(err.value)
    # A training run directory: RUN/model is used; same weights -> same pixels.
    shutil.copytree(model_dir, tmp_path / "run" / "model")
    (tmp_path / "run" / "checkpoints").mkdir()
    from_run = MumuSampler.from_checkpoint(tmp_path / "run", CFG)
    assert np.array_equal(px(from_run.generate(["a cat"], seed=6)[0]), px(sampler.generate(["a cat"], seed=6)[0]))


# --- generate_to_file --------------------------------------------------------------------------------------
def test_generate_to_file(tmp_path, sampler):
    RED.save(tmp_path / "red.png")
    text = "a <image:red.png> on a table"
    one = generate_to_file(sampler, text, tmp_path / "out" / "one.png", n=1, seed=2, base_dir=tmp_path)
    assert one == [tmp_path / "out" / "one.png"]
    # Compared with the same call's images: image i of n = 1 and of n = 3 agree only up to float rounding (a
    # CPU's kernels may differ with the batch's size; test_batch_equals_single checks that).
    with PIL.Image.open(one[0]) as im:
        assert im.size == (64, 64) and np.array_equal(px(im), px(sampler.generate(["a", RED, "on a table"], seed=2)[0]))
    expected = sampler.generate(["a", RED, "on a table"], n=3, seed=2)

    js = json.dumps([{"type": "text", "text": "a"}, {"type": "image", "path": "red.png"},
                     {"type": "text", "text": "on a table"}])
    many = generate_to_file(sampler, js, tmp_path / "out" / "s.png", n=3, seed=2, base_dir=tmp_path)
    assert many == [tmp_path / "out" / f"s-{i}.png" for i in range(3)]
    for path, exp in zip(many, expected):
        with PIL.Image.open(path) as im:
            assert np.array_equal(px(im), px(exp))
    grid = generate_to_file(sampler, text, tmp_path / "out" / "g.png", n=3, seed=2, base_dir=tmp_path, grid=True)
    with PIL.Image.open(grid[0]) as im:
        assert im.size == (192, 64) and np.array_equal(px(im)[:, 64:128], px(expected[1]))
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temp files left


def test_generate_to_file_errors_before_loading(tmp_path, model_dir):
    missing_model = tmp_path / "no-model"
    with pytest.raises(UserError, match="prompt image not found: .*missing.png"):
        generate_to_file(missing_model, "a <image:missing.png> cat", tmp_path / "o.png", base_dir=tmp_path)
    with pytest.raises(UserError, match="image extension"):
        generate_to_file(missing_model, "a cat", tmp_path / "o.txt")
    with pytest.raises(UserError, match="does not exist"):
        generate_to_file(missing_model, "a cat", tmp_path / "o.png")
    assert output_paths(tmp_path / "x.webp", 2) == [tmp_path / "x-0.webp", tmp_path / "x-1.webp"]
    # From a checkpoint path, with its own sampler config.
    paths = generate_to_file(model_dir, "a cat", tmp_path / "c.jpg", sampler_cfg=SamplerConfig(steps=1))
    with PIL.Image.open(paths[0]) as im:
        assert im.format == "JPEG" and im.size == (64, 64)
    assert not (tmp_path / "o.png").exists()
