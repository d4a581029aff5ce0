"""mumu.eval.unseen: the held-out subjects task is well posed and its scores read what they claim (no training)."""

import numpy as np
import pytest

from mumu import FLUENT_EMOJI_DIR as EMOJI
from mumu.eval.unseen import COLOURS, load_subjects, score_unseen, split_subjects, unseen_batches
from mumu.train.data import Example

SIZE = 64


@pytest.fixture(scope="module")
def split():
    return split_subjects(EMOJI, 16, seed=0)


@pytest.fixture(scope="module")
def held(split):
    return load_subjects(EMOJI, split[1], SIZE)


class Drawing:
    """A sampler that draws, for every prompt, the picture `draw(subject index, prompt)` gives."""

    def __init__(self, subjects, draw):
        self.subjects, self.draw = subjects, draw

    def generate_batch(self, prompts, n=1, seed=0):
        index = {id(s.reference): k for k, s in enumerate(self.subjects)}
        return [[self.draw(index[id(p[1])], p) for _ in range(n)] for p in prompts]


def test_the_split_is_disjoint_deterministic_and_covers_the_bundled_emoji(split):
    trained, held_out = split
    assert len(held_out) == 16 and len(trained) == 390 - 16 and not set(trained) & set(held_out)
    assert split_subjects(EMOJI, 16, seed=0) == split and split_subjects(EMOJI, 16, seed=1)[1] != held_out


def test_targets_are_their_own_nearest_and_prompts_carry_the_picture(held):
    from mumu.eval.prompt_following import nearest_target

    for colour in ("pink", "blue"):
        targets = [s.target(colour, SIZE) for s in held]
        assert list(nearest_target(targets, targets)) == list(range(len(held)))
        assert all(t.getpixel((0, 0)) == t.getpixel((SIZE - 1, SIZE - 1)) for t in targets)  # the asked background
    s = held[0]
    assert s.prompt("pink", "unimo") == ["a", s.reference, "on a pink background"]
    assert s.prompt("pink", "mumu") == ["a", s.reference, f"{s.name} on a pink background"]
    with pytest.raises(ValueError, match="form"):
        s.prompt("pink", "kosmos")
    mask = s.mask(SIZE)
    assert mask.shape == (SIZE, SIZE) and 0.1 < mask.mean() < 0.7 and not mask[0].any()


def test_batches_are_seeded_and_use_every_colour_and_form(held):
    first = next(unseen_batches(held, 64, seed=3))
    again = next(unseen_batches(held, 64, seed=3))
    other = next(unseen_batches(held, 64, seed=4))
    assert all(isinstance(ex, Example) and len(ex.entity_masks) == 1 for ex in first)
    assert [ex.image.tobytes() for ex in first] == [ex.image.tobytes() for ex in again]
    assert [ex.image.tobytes() for ex in first] != [ex.image.tobytes() for ex in other]
    assert {ex.prompt[2].split()[-2] for ex in first} == set(COLOURS)
    assert {ex.prompt[2].startswith("on a ") for ex in first} == {True, False}  # both prompt forms


def test_scores_separate_drawing_the_subject_from_pasting_it_or_ignoring_it(held):
    right = score_unseen(Drawing(held, lambda k, p: held[k].target("pink", SIZE)), held, "pink", "unimo", n=2)
    assert (right.pixels, right.identified, right.adherence, right.copy) == (1.0, 1.0, 1.0, 0.0)
    assert right.chance == 1 / 16
    pasted = score_unseen(Drawing(held, lambda k, p: held[k].reference), held, "pink", "unimo", n=1)
    assert pasted.copy == 1.0 and pasted.adherence < 0.2
    constant = score_unseen(Drawing(held, lambda k, p: held[0].target("blue", SIZE)), held, "pink", "mumu", n=1)
    assert constant.pixels <= 1 / 16 + 1e-9 and constant.adherence == 0.0
    assert np.isclose(constant.identified, 1 / 16) or constant.identified < 0.2
