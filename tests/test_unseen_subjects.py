"""The trained model draws subjects it never saw, from their picture alone: the papers' zero-shot promise, at toy scale.

The shared `unseen` model (tests/trained_models.py) learns mumu.eval.unseen's task on 374 of the bundled 390 emoji:
a subject's picture in a scene its text sets ("a <image> on a pink background", UNIMO-G's form, or "a <image> cactus
on a pink background", MUMU's) -> the subject redrawn, centred, on that background. The 16 others are never in its
training. Asked for them, in two groups of K = 8, each sample is named by its nearest target among its group (chance
1/8); its background is read against the colour the text asked for, and a sample nearer the reference pasted
unchanged than its subject's target counts as a copy. The cut: the same prompts with every picture blanked to white,
which leaves nothing to take a subject from, must fall to chance. bench/unseen_subjects.py draws the longer curve
(training subjects x steps, docs/recipe.md).
"""

import numpy as np
import pytest

from mumu.eval.unseen import FORMS, score_unseen, unseen_batches
from tests.trained_models import SPECS, unseen_split

pytestmark = pytest.mark.learning(model="unseen")

K, N_IMAGES, SEED, COLOUR = 8, 2, 1234, "pink"
# Two images of 32 below the lowest of three training seeds on both kernel sets (0.406; docs/figures.md).
BAR = 0.34


@pytest.fixture(scope="module")
def split():
    return unseen_split()


def test_held_out_subjects_are_never_in_the_models_training(split):
    trained, held = split
    assert len(held) == SPECS["unseen"].k == 2 * K and len(trained) == 390 - 2 * K
    assert not {s.name for s in trained} & {s.name for s in held}
    held_pictures = {s.reference.tobytes() for s in held}
    for batch, _ in zip(unseen_batches(trained, 64, seed=0), range(4)):
        assert not {ex.prompt[1].tobytes() for ex in batch} & held_pictures


def _blanked(subjects):
    """The subjects with their pictures white: the prompts keep their words and scenes, the picture says nothing."""
    return [type(s)(s.name, s.emoji, s.reference.point(lambda _: 255)) for s in subjects]


def _scores(sampler, held, form: str) -> dict:
    groups = [score_unseen(sampler, held[i:i + K], COLOUR, form, n=N_IMAGES, seed=SEED) for i in (0, K)]
    return {name: float(np.mean([getattr(g, name) for g in groups])) for name in ("pixels", "adherence", "copy")}


def test_trained_model_draws_subjects_it_never_saw_from_their_picture(toy_models, split):
    sampler = toy_models("unseen").sampler()
    held = split[1]
    scores = {form: _scores(sampler, held, form) for form in FORMS}
    blank = _scores(sampler, _blanked(held), "unimo")
    print(" / ".join(f"{form} {s['pixels']:.3f} (background {s['adherence']:.2f}, copy {s['copy']:.2f})"
                     for form, s in scores.items()) + f" / blanked {blank['pixels']:.3f}")
    for form, s in scores.items():
        # Named among 8 held-out subjects (chance 0.125) at BAR or more, and redrawn, not pasted (at most 0.06
        # measured). The asked background is printed, not asserted: at these 1,400 steps it is kept in 0.22-1.00
        # of the samples depending on the seed (docs/recipe.md); the bench's 2,000-step arms keep it everywhere.
        assert s["pixels"] >= BAR, (form, s)
        assert s["copy"] <= 0.2, (form, s)
    # The cut: with the pictures blanked nothing names the subject, and the samples fall to chance.
    assert blank["pixels"] <= 0.2, blank
