"""The trained model follows its prompt: text prompts and image prompts, each to its own target.

The tiny profile's model (mumu/profiles/tiny.yaml) is trained from scratch on the toy task of
mumu.eval.prompt_following (K = 4 emoji subjects, each prompted by its name or by its picture alone), then
every prompt is sampled from the same noise seeds and each image is assigned to its nearest target. Two
prompt paths are trained (RECIPES): tiny's own, MUMU's, and UNIMO-G's (the unimo-g profile's).
Cutting the condition must make the score fail: a model trained with prompts shuffled against targets, the
trained model with its connector's output zeroed, and with its image features zeroed (image prompts only).
So must cutting either part of the recipe that makes the from-scratch UNet learn its condition in this budget
(docs/recipe.md): v-prediction on a zero-terminal-SNR schedule (trained with ε on SD's schedule instead), and
the fitted VAE (the same VAE with random weights).
"""

from pathlib import Path

import numpy as np
import pytest
import torch

from mumu import SAMPLES_DIR
from mumu.config.base import ModelSource
from mumu.eval.prompt_following import score_following, toy_batches, toy_subjects
from mumu.generate import MumuSampler, load_model
from tests.toy_training import toy_profile, train_on_toy

# 300 steps: at 200 the recipe missed the 0.9 bar at two training seeds of six (0.75); at 300 it scores 1.00 at all six.
K, N_IMAGES, STEPS, SEED = 4, 4, 300, 1234
EMOJI = SAMPLES_DIR.parent / "emoji"
# The prompt paths: MUMU's (tiny's own: the perceiver bypassed, each image's patch features pooled, LoRA on the
# MLLM) and UNIMO-G's (the MLLM frozen, images read through its perceiver; only the connector and UNet train).
RECIPES = {
    "mumu": {},
    "unimo-g": {"model.encoder.train_language_model": "frozen", "model.encoder.lora.enabled": False,
                "model.encoder.lora_projector": False, "model.encoder.bypass_resampler": False},
}


def _unfitted_vae() -> dict:
    """The fitted VAE's architecture with random weights (seeded): the VAE before mumu.train.fit_vae."""
    from diffusers import AutoencoderKL

    config = AutoencoderKL.load_config(ModelSource(pretrained="bundled:tiny_vae").location)
    return {"config": {k: v for k, v in config.items() if not k.startswith("_")}, "seed": 0}


# Each part of tiny's training recipe cut on its own, at the same budget.
RECIPE_CUTS = {
    "epsilon-prediction": lambda: {"model.decoder.prediction_type": "epsilon",
                                   "model.decoder.rescale_betas_zero_snr": False},
    "unfitted-vae": lambda: {"model.decoder.vae": _unfitted_vae()},
}


def _profile(recipe: str = "mumu", **overrides):
    return toy_profile(STEPS, **RECIPES[recipe], **overrides)


def _train(out: Path, shuffle_targets: bool, recipe: str = "mumu", **overrides) -> MumuSampler:
    profile = _profile(recipe, **overrides)
    subjects = toy_subjects(EMOJI, K, profile.model.decoder.resolution)
    return MumuSampler(load_model(train_on_toy(profile, subjects, out, shuffle_targets=shuffle_targets)),
                       profile.eval.sampler)


@pytest.fixture(scope="module")
def subjects():
    return toy_subjects(EMOJI, K, _profile().model.decoder.resolution)


@pytest.fixture(scope="module", params=list(RECIPES))
def trained(request, tmp_path_factory) -> MumuSampler:
    return _train(tmp_path_factory.mktemp(f"follow-{request.param}"), shuffle_targets=False, recipe=request.param)


def test_toy_task_is_well_posed(subjects):
    """Targets are far apart, each target is its own nearest target, and the stream pairs prompts right."""
    from mumu.eval.prompt_following import nearest_target

    targets = [s.target for s in subjects]
    assert list(nearest_target(targets, targets)) == list(range(K))
    px = np.stack([np.asarray(t, np.float32) for t in targets])
    gaps = [np.abs(px[i] - px[j]).mean() for i in range(K) for j in range(i + 1, K)]
    assert min(gaps) > 40, gaps
    batch = next(toy_batches(subjects, 16, seed=0))
    for ex in batch:
        owner = [s for s in subjects if s.target is ex.image]
        assert len(owner) == 1 and (ex.prompt == owner[0].prompt("text") or ex.prompt[1] is owner[0].prompt_image)
        assert len(ex.entity_masks) == sum(not isinstance(seg, str) for seg in ex.prompt)
    assert {len(ex.prompt) for ex in batch} == {1, 2}  # both prompt kinds occur


def test_trained_model_follows_text_and_image_prompts(trained, subjects):
    score = score_following(trained, subjects, n=N_IMAGES, seed=SEED)
    print(f"accuracy {score.accuracy}, spread {score.spread}, chance {score.chance}")
    assert score.accuracy["text"] >= 0.9, score.accuracy
    assert score.accuracy["image"] >= 0.9, score.accuracy
    # Images from one noise seed differ between prompts by tens of grey levels, not by rounding.
    assert min(score.spread.values()) > 20, score.spread


def test_zeroed_condition_fails(trained, subjects, monkeypatch):
    """The same trained model with the connector's output zeroed: every prompt gives the same picture per
    seed, so at most one prompt in K can be right."""
    connector = trained.model.connector
    real = connector.forward

    def zeroed(hidden, mask):
        states, pooled = real(hidden, mask)
        return torch.zeros_like(states), torch.zeros_like(pooled)

    monkeypatch.setattr(connector, "forward", zeroed)
    score = score_following(trained, subjects, n=N_IMAGES, seed=SEED)
    print(f"zeroed condition: accuracy {score.accuracy}, spread {score.spread}")
    assert max(score.accuracy.values()) <= 1.0 / K + 1e-9, score.accuracy
    assert max(score.spread.values()) < 1.0, score.spread


def test_zeroed_image_features_fail_image_prompts(trained, subjects, monkeypatch):
    """The trained model with every prompt image's features zeroed where they enter the MLLM (after the pooled
    projection, or the perceiver): image prompts become one prompt, text prompts are untouched."""
    encoder = trained.model.encoder
    real = encoder.project_features
    monkeypatch.setattr(encoder, "project_features", lambda *a: torch.zeros_like(real(*a)))
    score = score_following(trained, subjects, n=N_IMAGES, seed=SEED)
    print(f"zeroed image features: accuracy {score.accuracy}, spread {score.spread}")
    assert score.accuracy["image"] <= 1.0 / K + 1e-9 and score.spread["image"] < 1.0, score
    assert score.accuracy["text"] >= 0.9, score.accuracy


def test_prompts_shuffled_against_targets_fail(tmp_path, subjects):
    """Trained with every prompt paired with a random subject's target, the condition carries nothing."""
    score = score_following(_train(tmp_path, shuffle_targets=True), subjects, n=N_IMAGES, seed=SEED)
    print(f"shuffled training: accuracy {score.accuracy}, spread {score.spread}")
    assert max(score.accuracy.values()) < 0.6, score.accuracy


@pytest.mark.parametrize("cut", list(RECIPE_CUTS))
def test_recipe_cut_fails(tmp_path, subjects, cut):
    """Trained the same 300 steps with one part of the recipe cut, the model misses the bar the recipe passes.
    Measured at training seeds 0 / 1 / 2: ε-prediction 0.38 / 0.50 / 0.63 (text), 0.38 / 0.44 / 0.63 (image), where
    the recipe scores 1.00 on both at each (and at seeds 3-5); the unfitted VAE, whose posterior noise is as large
    as the latents, hides the targets from the UNet: chance (0.25), spread 1.3 / 0.7 (under 2 at 200 steps, each
    seed)."""
    score = score_following(_train(tmp_path, shuffle_targets=False, **RECIPE_CUTS[cut]()), subjects,
                            n=N_IMAGES, seed=SEED)
    print(f"{cut}: accuracy {score.accuracy}, spread {score.spread}")
    assert max(score.accuracy.values()) < 0.9, score.accuracy
    if cut == "unfitted-vae":
        assert max(score.accuracy.values()) <= 0.5 and max(score.spread.values()) < 5, score
