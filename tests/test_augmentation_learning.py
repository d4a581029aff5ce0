"""MUMU's conditioning-image augmentation makes the trained model take the subject, not the exact crop.

The shared `singles` model (tests/trained_models.py: K = 4 subjects, text and image prompts, 600 steps) is trained
with half of its prompt images augmented as the training loader does (mumu.train.augment: random crop keeping >= 90 %
of each side, flip, grayscale, pixel noise). It is prompted with each subject's picture cut to 90 % and 80 % of its
side at five places (corners and centre) and finds the subject in 86-100 % of the images; the same training without
augmentation (`python -m bench.learning_runs --cuts not-augmented`) in 80 % (docs/recipe.md).
"""

import dataclasses

import numpy as np
import pytest

from mumu.eval.prompt_following import score_following, toy_iterate
from tests.toy_training import toy_profile
from tests.trained_models import SPECS, spec_profile, subjects_of

pytestmark = pytest.mark.learning(model="singles")

N_IMAGES, SEED = 2, 1234  # 80 images on cut prompts: one is 0.0125
CUTS = (0.9, 0.8)  # kept share of each side
PLACES = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.5, 0.5))  # where the kept window sits


def _profile(share: float):
    return toy_profile(SPECS["singles"].steps, **{"train.tune.augment.share": share})


@pytest.fixture(scope="module")
def subjects():
    return subjects_of("singles")


def _cut(image, keep: float, place: tuple[float, float]):
    w, h = image.size
    cw, ch = int(w * keep), int(h * keep)
    x0, y0 = int(place[0] * (w - cw)), int(place[1] * (h - ch))
    return image.crop((x0, y0, x0 + cw, y0 + ch)).resize(image.size)


def _accuracy_on_cut_prompts(sampler, subjects) -> float:
    scores = []
    for keep in CUTS:
        for place in PLACES:
            cut = [dataclasses.replace(s, prompt_image=_cut(s.prompt_image, keep, place)) for s in subjects]
            scores.append(score_following(sampler, cut, n=N_IMAGES, seed=SEED, kinds=("image",)).accuracy["image"])
    return float(np.mean(scores))


def test_the_stream_augments_the_stages_share_of_prompt_images(subjects):
    """The toy stream a training reads (toy_iterate) augments the stage's share, as the loader does, unless the
    caller names its own augmentation."""
    originals = {s.prompt_image.tobytes() for s in subjects}

    def prompt_images(iterate, share):
        stage = _profile(share).train.tune.model_copy(update={"batch_size": 256})
        return [seg for ex in next(iterate(None, stage, 0)) for seg in ex.prompt if not isinstance(seg, str)]

    images = prompt_images(toy_iterate(subjects), 0.5)
    changed = np.mean([im.tobytes() not in originals for im in images])
    assert len(images) > 100 and 0.4 < changed < 0.6, (len(images), changed)
    for plain in (prompt_images(toy_iterate(subjects), 0.0), prompt_images(toy_iterate(subjects, augment=None), 0.5)):
        assert len(plain) > 100 and all(im.tobytes() in originals for im in plain)


def test_the_shared_model_augments_half_of_its_prompt_images():
    assert spec_profile(SPECS["singles"], 0).train.tune.augment.share == 0.5


def test_augmented_training_finds_the_subject_in_new_framings(toy_models, subjects):
    trained = toy_models("singles")
    sampler = trained.sampler()
    whole = score_following(sampler, subjects, n=N_IMAGES, seed=SEED, kinds=("image",)).accuracy["image"]
    cut = _accuracy_on_cut_prompts(sampler, subjects)
    print(f"augmented share {trained.profile.train.tune.augment.share}: whole prompt images {whole:.2f}, "
          f"cut ones {cut:.2f}")
    # Each bar sits two of its images (8 whole, 80 cut) below the lowest value over training seeds and kernel sets
    # (docs/figures.md); the cut bar stays above the same training without augmentation (docs/recipe.md).
    assert whole >= 0.75, whole
    assert cut >= 0.82, cut
