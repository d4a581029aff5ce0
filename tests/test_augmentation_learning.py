"""MUMU's conditioning-image augmentation makes the trained model take the subject, not the exact crop.

The tiny model is trained 600 steps on mumu.eval.prompt_following's toy task (K = 4 subjects, text and image
prompts) with the prompt images augmented as the training loader does (mumu.train.augment: random crop keeping
>= 90 % of each side, flip, grayscale, pixel noise) on half of them, and with none (the cut). Both are then
prompted with each subject's picture cut to 90 % and 80 % of its side at five places (corners and centre): with
augmentation the subject is found every time, without it about one prompt in seven is drawn as a neighbour.
600 steps, not fewer: at 200 and 300 the gap depends on the training seed (docs/recipe.md).
"""

import dataclasses

import numpy as np
import pytest

from mumu import SAMPLES_DIR
from mumu.eval.prompt_following import score_following, toy_iterate, toy_subjects
from mumu.generate import MumuSampler, load_model
from tests.toy_training import toy_profile, train_on_toy

K, N_IMAGES, STEPS, SEED = 4, 4, 600, 1234
EMOJI = SAMPLES_DIR.parent / "emoji"
CUTS = (0.9, 0.8)  # kept share of each side
PLACES = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.5, 0.5))  # where the kept window sits


def _profile(share: float):
    return toy_profile(STEPS, **{"train.tune.augment.share": share})


@pytest.fixture(scope="module")
def subjects():
    return toy_subjects(EMOJI, K, _profile(0.0).model.decoder.resolution)


@pytest.fixture(scope="module", params=[0.5, 0.0], ids=["augmented", "not-augmented"])
def trained(request, subjects, tmp_path_factory) -> tuple[float, MumuSampler]:
    profile = _profile(request.param)
    model_dir = train_on_toy(profile, subjects, tmp_path_factory.mktemp("augment"))
    return request.param, MumuSampler(load_model(model_dir), profile.eval.sampler)


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


def test_augmented_training_finds_the_subject_in_new_framings(trained, subjects):
    share, sampler = trained
    whole = score_following(sampler, subjects, n=N_IMAGES, seed=SEED, kinds=("image",)).accuracy["image"]
    cut = _accuracy_on_cut_prompts(sampler, subjects)
    print(f"augmented share {share}: whole prompt images {whole:.2f}, cut ones {cut:.2f}")
    # Measured at training seeds 0 / 1 / 2: whole 1.00 for both; cut prompts 0.99 / 1.00 / 1.00 augmented,
    # 0.85 / 0.86 / 0.82 not.
    assert whole >= 0.9  # both models follow the pictures they were trained on
    if share > 0:
        assert cut >= 0.95, cut
    else:  # the cut: without augmentation a new framing loses subjects
        assert cut <= 0.9, cut
