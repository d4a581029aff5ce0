"""SDXL's size micro-conditioning: the trained model draws at the resolution it is told its picture came from.

SDXL trains on small images too and tells its UNet each one's original size (add_time_ids; here
models/mumu_model.py `prepare`), so that at sampling "originally large" asks for a sharp picture instead of the
blur of an upscaled small one. The shared `singles` model (tests/trained_models.py: the toy task, K = 4, text and
image prompts) has a share of its targets given at LOW_RES = 4 px (`toy_batches(..., low_res=...)`: the loader scales
them up to 64 px, a blurred blob, and tells the UNet (4, 4)). Every prompt is sampled told 4 px and told 64 px
(`eval.sampler.original_size`), and each image assigned to its nearest of the 2K pictures, each subject's target
and its blurred version. The cut: the told size kept from the UNet (its time ids always say the target size), so
the model draws the same picture whatever it is told. Trained on the same blurred pixels handed over already at
64 px, the model cannot be asked for one or the other (bench/learning_runs.py --cuts, docs/recipe.md).
"""

import numpy as np
import pytest

from mumu.eval.prompt_following import (
    KINDS, LOW_RES, low_res_target, nearest_target, toy_batches, toy_iterate,
)
from tests.toy_training import toy_profile
from tests.trained_models import LOW_RES_SHARE, SPECS, subjects_of

pytestmark = pytest.mark.learning(model="singles")

K, N_IMAGES, SEED, SHARE = 4, 4, 1234, 0.5
STEPS = SPECS["singles"].steps


@pytest.fixture(scope="module")
def subjects():
    return subjects_of("singles")


def _drawn(trained, subjects, original_size: int) -> dict[str, tuple[float, float]]:
    """Per prompt kind: (share of images of their own subject, share nearest a blurred picture) among the 2K."""
    sampler = trained.sampler(original_size=original_size)
    pictures = [s.target for s in subjects] + [low_res_target(s) for s in subjects]
    out = {}
    for kind in KINDS:
        images = sampler.generate_batch([s.prompt(kind) for s in subjects], n=N_IMAGES, seed=SEED)
        picked = np.stack([nearest_target(row, pictures) for row in images])  # [K, n]
        out[kind] = (float(np.mean(picked % K == np.arange(K)[:, None])), float(np.mean(picked >= K)))
    return out


def test_the_stream_gives_a_share_of_targets_at_low_resolution(subjects):
    """low_res gives its share of targets at LOW_RES px (masks with them) and low_res_upsampled the same pixels at
    full size; the two pictures of a subject are apart, each its own nearest; the default stream is untouched."""
    size = subjects[0].target.size
    plain, small, upsampled = (next(toy_batches(subjects, 400, seed=0, **kw))
                               for kw in ({}, {"low_res": SHARE}, {"low_res": SHARE, "low_res_upsampled": True}))
    is_small = [ex.image.size == (LOW_RES, LOW_RES) for ex in small]
    assert 0.4 < np.mean(is_small) < 0.6
    assert all(ex.image.size == size for ex, s in zip(small, is_small) if not s)
    assert all(m.shape == (LOW_RES, LOW_RES) for ex, s in zip(small, is_small) if s for m in ex.entity_masks)
    for ex, ex_small, ex_up, s in zip(plain, small, upsampled, is_small):
        assert ex.prompt == ex_small.prompt == ex_up.prompt and ex_up.image.size == size
        assert (ex_up.image.tobytes() == ex.image.tobytes()) != s
    assert [ex.image.tobytes() for ex in next(toy_batches(subjects, 400, seed=0))] == [ex.image.tobytes() for ex in plain]
    pictures = [s.target for s in subjects] + [low_res_target(s) for s in subjects]
    assert list(nearest_target(pictures, pictures)) == list(range(2 * K))
    gaps = [np.abs(np.asarray(s.target, np.float32) - np.asarray(low_res_target(s), np.float32)).mean() for s in subjects]
    assert min(gaps) > 10, gaps
    with pytest.raises(ValueError, match="low_res"):
        next(toy_batches(subjects, 2, seed=0, low_res=1.5))
    stage = toy_profile(STEPS).train.tune
    assert next(toy_iterate(subjects, low_res=1.0)(None, stage, 0))[0].image.size == (LOW_RES, LOW_RES)


def _told(trained, subjects) -> tuple[float, float, dict, dict]:
    """(blurred share told LOW_RES px, blurred share told full size, and the per-kind figures of each)."""
    small, full = (_drawn(trained, subjects, side) for side in (LOW_RES, subjects[0].target.size[0]))
    blurred_small, blurred_full = (float(np.mean([d[kind][1] for kind in KINDS])) for d in (small, full))
    return blurred_small, blurred_full, small, full


def test_trained_model_draws_the_resolution_it_is_told(toy_models, subjects):
    trained = toy_models("singles")
    blurred_small, blurred_full, small, full = _told(trained, subjects)
    print(f"low-res share {LOW_RES_SHARE}: told {LOW_RES} px {small}\n  told full size {full}")
    for kind in KINDS:  # the prompt's subject, whatever size it is told
        assert small[kind][0] >= 0.85 and full[kind][0] >= 0.85, (small, full)
    # Told 4 px: the blur of an upscaled small image; told 64: mostly the sharp target (a share of training's targets
    # was blurred, so some noise draws a blur at any told size; seeds and kernels: docs/figures.md).
    assert blurred_small >= 0.8 and blurred_small - blurred_full >= 0.5, (blurred_small, blurred_full)


def test_told_size_kept_from_the_unet_fails(toy_models, subjects, monkeypatch):
    """The same model with the told size cut where it enters the UNet (every time id says the target size): it
    draws the sharp target however small it is told its picture was, so the test above would fail."""
    trained = toy_models("singles")
    samplers = []
    real_sampler = trained.sampler

    def cut_sampler(**updates):
        sampler = real_sampler(**updates)
        model, predict = sampler.model, sampler.model.predict

        def predict_told_target_size(latents, timesteps, cond, add_time_ids):
            ids = add_time_ids.clone()
            ids[:, 0:2] = ids[:, 4:6]  # original (h, w) := target (h, w)
            return predict(latents, timesteps, cond, ids)

        monkeypatch.setattr(model, "predict", predict_told_target_size)
        samplers.append(sampler)
        return sampler

    monkeypatch.setattr(trained, "sampler", cut_sampler)
    blurred_small, blurred_full, small, full = _told(trained, subjects)
    print(f"told size cut: told {LOW_RES} px {small}\n  told full size {full}")
    assert len(samplers) == 2 and abs(blurred_small - blurred_full) <= 0.1, (small, full)
