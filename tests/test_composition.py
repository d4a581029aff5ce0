"""The trained model composes subjects it never saw together: MUMU's point, tried on pairs held out of training.

mumu.eval.prompt_following's two-subject task with K = 8 subjects: 56 ordered pairs, of which four pairs, in both
orders, never occur in training ((0, 1), (2, 3), (4, 5), (6, 7): every subject is held out with exactly one
partner and trained with the six others, on either side). The shared `pairs` model (tests/trained_models.py)
is trained on the other 48, then asked for the held-out pairs by names and by pictures. A held-out pair's image is right when both of its
subjects are drawn, one per half ("either" of score_pairs: in the prompt's order or the other; the order of an
unseen pair is not asked for). A model that only reproduces the pairs it was trained on scores 0 there: an image
of a pair it saw shows at most one subject of a held-out pair, or the same subject twice. That is what the task
gave with K = 4 and K = 6 (docs/recipe.md: 8 of 12 and 26 of 30 ordered pairs trained, unseen pairs drawn as seen
ones); with 48 pairs to learn from, the model draws both subjects of unseen pairs in about half of the images.
"""

import pytest

from mumu.eval.prompt_following import drawn_pairs, ordered_pairs, pair_target, score_pairs, toy_batches
from tests.trained_models import HELD_OUT_PAIRS, SPECS, TRAINED_PAIRS, subjects_of

pytestmark = pytest.mark.learning(model="pairs")

K, N_IMAGES, SEED = SPECS["pairs"].k, 4, 1234
HELD_OUT, TRAINED = HELD_OUT_PAIRS, TRAINED_PAIRS


@pytest.fixture(scope="module")
def subjects():
    return subjects_of("pairs")


def test_held_out_pairs_are_well_posed_and_never_trained(subjects):
    """Every half of every pair's target is nearest to its own subject's panel among the 8; the stream draws only
    trained pairs, and every subject is trained on both sides of a picture."""
    targets = [pair_target(subjects[a], subjects[b])[0] for a, b in ordered_pairs(K)]
    assert drawn_pairs(targets, subjects).tolist() == [list(p) for p in ordered_pairs(K)]
    drawn = set()
    for batch, _ in zip(toy_batches(subjects, 64, seed=0, entities=2, pairs=TRAINED), range(10)):
        drawn |= {tuple(p) for p in drawn_pairs([ex.image for ex in batch], subjects).tolist()}
    assert drawn == set(TRAINED) and not drawn & set(HELD_OUT)
    assert {a for a, _ in TRAINED} == {b for _, b in TRAINED} == set(range(K))
    with pytest.raises(ValueError, match="entities=2"):
        next(toy_batches(subjects, 2, seed=0, pairs=TRAINED))


def test_trained_model_draws_both_subjects_of_pairs_it_never_saw(toy_models, subjects):
    # That the trained pairs are learned, in order, is tests/test_multi_entity_following.py's claim on this model.
    held = score_pairs(toy_models("pairs").sampler(), subjects, n=N_IMAGES, seed=SEED, pairs=HELD_OUT).accuracy
    print(f"held-out pairs {held}")
    # Pairs never trained: both subjects drawn in a fifth of the images or more, against 0 for a model that
    # reproduces trained pairs; the bar sits two of the 64 images below the lowest value over training seeds and
    # kernel sets (docs/figures.md).
    assert (held["text"]["either"] + held["image"]["either"]) / 2 >= 0.2, held
