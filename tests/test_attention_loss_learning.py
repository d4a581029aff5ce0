"""The attention-mask loss (UNIMO-G's visual-enhanced learning) is what puts an image entity's cross-attention
on its mask in the trained model.

The shared `attention` model (tests/trained_models.py) is trained from scratch on the toy task of
mumu.eval.prompt_following with image prompts ("a <image>"), each target showing its subject at a random position
(toy_batches' `placed_scale`), with the tiny profile's attention-mask loss weight. On held-out examples the test reads
the per-entity cross-attention maps the model's own training_loss hands to its loss (models/attention.py: the
attention mass on the entity's image tokens at each latent pixel, per layer), and compares the mean mass inside the
entity's mask with the mean outside it. A map that ignores where the subject is has the same mass on both sides; the
model trained with the loss concentrates it inside at every layer resolution. The cut: the same maps read against
the mask of another held-out example whose subject is elsewhere show no such concentration. Trained without the
loss, the maps ignore the masks (`python -m bench.learning_runs --cuts no-attention-loss`, docs/recipe.md).
"""

import numpy as np
import pytest
import torch

import models.mumu_model
from models.attention import layer_hw, masks_at
from mumu.config.train import AttnLossConfig
from mumu.eval.prompt_following import toy_batches
from tests.trained_models import SPECS, TINY_ATTN_WEIGHT, spec_profile

pytestmark = pytest.mark.learning(model="attention")

SCALE, HELD_BATCHES = SPECS["attention"].stream["placed_scale"], 4


def test_the_model_trains_with_the_tiny_profiles_loss_weight():
    assert TINY_ATTN_WEIGHT > 0 and spec_profile(SPECS["attention"], 0).train.tune.attn_loss.weight == TINY_ATTN_WEIGHT


def elsewhere(masks: torch.Tensor) -> torch.Tensor:
    """[B, K, H, W] masks -> for each example, the mask of the example in the batch that overlaps its own least."""
    flat = masks.flatten(1).float()
    overlap = flat @ flat.T
    overlap.fill_diagonal_(float("inf"))
    return masks[overlap.argmin(1)]


def measure_attention(trained, monkeypatch, shift_masks: bool = False) -> dict:
    """On held-out examples: the model's attention-mask L1 and, per layer resolution, the mean entity attention mass
    (inside the mask, outside it). shift_masks: each example's maps read against the mask of the example whose
    subject lies furthest from its own (`elsewhere`)."""
    seen = []  # what training_loss passes to its loss: the per-layer entity maps [B, K, h*w] and the masks
    real_loss = models.mumu_model.attention_mask_loss

    def recording(maps, latent_hw, entity_masks, valid):
        seen.append((maps, latent_hw, entity_masks))
        return real_loss(maps, latent_hw, entity_masks, valid)

    monkeypatch.setattr(models.mumu_model, "attention_mask_loss", recording)
    model = trained.sampler().model.eval()
    held = toy_batches(trained.subjects, 16, seed=10_000, kinds=("image",), placed_scale=SCALE)  # not a training seed
    generator = torch.Generator().manual_seed(0)
    l1, mass = [], {}
    with torch.no_grad():
        for _ in range(HELD_BATCHES):
            l1.append(model.training_loss(model.prepare(next(held)), generator, AttnLossConfig(weight=1.0))["attn"])
    for maps, latent_hw, masks in seen:
        if shift_masks:
            masks = elsewhere(masks)
        for m in maps:
            b, k, q = m.shape
            h, w = layer_hw(latent_hw, q)
            inside = masks_at(masks.float(), (h, w)).view(b, k, q) > 0.5
            mass.setdefault(h, []).append((m[inside].mean().item(), m[~inside].mean().item()))
    assert len(seen) == HELD_BATCHES and len(mass) >= 2  # the tiny UNet's cross-attention runs at two resolutions
    return {"l1": float(np.mean([v.item() for v in l1])),
            "mass": {h: tuple(np.mean(v, axis=0)) for h, v in sorted(mass.items())}}


def test_trained_attention_concentrates_on_the_entity_masks(toy_models, monkeypatch):
    trained = toy_models("attention")
    with_loss = measure_attention(trained, monkeypatch)
    print(f"trained with loss weight {trained.profile.train.tune.attn_loss.weight}: {with_loss}")
    for h, (inside, outside) in with_loss["mass"].items():
        assert inside > 3 * outside, (h, inside, outside)  # seeds and kernels: docs/figures.md


def test_attention_read_against_another_placement_ignores_the_mask(toy_models, monkeypatch):
    """The cut: each example's maps against the mask of another example whose subject lies elsewhere."""
    shifted = measure_attention(toy_models("attention"), monkeypatch, shift_masks=True)
    print(f"maps against another example's mask: {shifted}")
    for h, (inside, outside) in shifted["mass"].items():
        assert inside < 1.2 * outside, (h, inside, outside)
