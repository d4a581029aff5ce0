"""SDXL's size micro-conditioning: the trained model draws at the resolution it is told its picture came from.

SDXL trains on small images too and tells its UNet each one's original size (add_time_ids; here
models/mumu_model.py `prepare`), so that at sampling "originally large" asks for a sharp picture instead of the
blur of an upscaled small one. The toy task (K = 4, text and image prompts) with half of its targets given at
LOW_RES = 4 px (`toy_batches(..., low_res=0.5)`: the loader scales them up to 64 px, a blurred blob, and tells the
UNet (4, 4)), trained 600 steps; every prompt is then sampled told 4 px and told 64 px (`eval.sampler.
original_size`), and each image assigned to its nearest of the 2K pictures, each subject's target and its blurred
version. The cut: the same blurred pixels handed over already at 64 px (`low_res_upsampled=True`), so every
example's original size reads 64: the model cannot be asked for one or the other, and draws either as the noise
falls, whatever size it is told.
"""

import numpy as np
import pytest

from mumu import SAMPLES_DIR
from mumu.eval.prompt_following import (
    KINDS, LOW_RES, low_res_target, nearest_target, toy_batches, toy_iterate, toy_subjects,
)
from mumu.generate import MumuSampler, load_model
from tests.toy_training import toy_profile, train_on_toy

K, N_IMAGES, STEPS, SEED, SHARE = 4, 4, 600, 1234, 0.5
EMOJI = SAMPLES_DIR.parent / "emoji"


@pytest.fixture(scope="module")
def subjects():
    return toy_subjects(EMOJI, K, toy_profile(STEPS).model.decoder.resolution)


@pytest.fixture(scope="module", params=[False, True], ids=["original-size-told", "upsampled-before-the-loader"])
def trained(request, subjects, tmp_path_factory):
    profile = toy_profile(STEPS)
    model_dir = train_on_toy(profile, subjects, tmp_path_factory.mktemp("size"), low_res=SHARE,
                             low_res_upsampled=request.param)
    return request.param, load_model(model_dir), profile.eval.sampler


def _drawn(model, sampler_cfg, subjects, original_size: int) -> dict[str, tuple[float, float]]:
    """Per prompt kind: (share of images of their own subject, share nearest a blurred picture) among the 2K."""
    sampler = MumuSampler(model, sampler_cfg.model_copy(update={"original_size": original_size}))
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


def test_trained_model_draws_the_resolution_it_is_told(trained, subjects):
    upsampled, model, sampler_cfg = trained
    small, full = (_drawn(model, sampler_cfg, subjects, side) for side in (LOW_RES, subjects[0].target.size[0]))
    print(f"low-res targets upsampled before the loader: {upsampled}\n  told {LOW_RES} px {small}\n  told full size {full}")
    for kind in KINDS:  # both models draw the prompt's subject, whatever size they are told
        assert small[kind][0] >= 0.9 and full[kind][0] >= 0.9, (small, full)
    blurred_small, blurred_full = (np.mean([d[kind][1] for kind in KINDS]) for d in (small, full))
    if not upsampled:
        # Told 4 px: the blur of an upscaled small image; told 64: the sharp target. Measured at training seeds
        # 0, 1 and 2: 1.00 blurred told 4 and 0.00 told 64, both prompt kinds.
        assert blurred_small >= 0.8 and blurred_full <= 0.3, (blurred_small, blurred_full)
    else:
        # The cut: the size it is told changes nothing; which picture comes out is the noise's choice (blurred,
        # told 4 / 64, at seeds 0, 1, 2: 0.22 / 0.19, 0.88 / 0.88, 1.00 / 1.00).
        assert abs(blurred_small - blurred_full) <= 0.25, (blurred_small, blurred_full)
