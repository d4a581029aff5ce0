"""The trained model follows its prompt: text prompts and image prompts, each to its own target.

The tiny profile's model, trained from scratch on the toy task of mumu.eval.prompt_following (K = 4 emoji subjects,
each prompted by its name or by its picture alone; tests/trained_models.py), samples every prompt from the same
noise seeds and each image is assigned to its nearest target. Two prompt paths are trained: tiny's own, MUMU's (the
shared `singles` model, which also learns prompt-image augmentation and low-resolution targets), and UNIMO-G's (the
unimo-g profile's). Cutting the condition must make the score fail: the trained model with its connector's output
zeroed, and with its image features zeroed (image prompts only). The recipe's own parts cut in training
(ε-prediction, the unfitted VAE) and prompts shuffled against targets: bench/learning_runs.py --cuts, docs/recipe.md.
"""

import numpy as np
import pytest
import torch

from mumu.eval.prompt_following import nearest_target, score_following, toy_batches
from mumu.generate import MumuSampler
from tests.trained_models import subjects_of

pytestmark = pytest.mark.learning

K, N_IMAGES, SEED = 4, 4, 1234
MODELS = ("singles", "unimo-g")  # MUMU's prompt path and UNIMO-G's (tests/trained_models.py)


@pytest.fixture(scope="module")
def subjects():
    return subjects_of("singles")


@pytest.fixture(scope="module", params=[pytest.param(m, marks=pytest.mark.learning(model=m)) for m in MODELS])
def trained(request, toy_models) -> MumuSampler:
    return toy_models(request.param).sampler()


def test_toy_task_is_well_posed(subjects):
    """Targets are far apart, each target is its own nearest target, and the stream pairs prompts right."""
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
    # The bar sits two of the 16 images below the lowest value over training seeds and kernel sets (docs/figures.md).
    assert score.accuracy["text"] >= 0.85, score.accuracy
    assert score.accuracy["image"] >= 0.85, score.accuracy
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
    assert score.accuracy["text"] >= 0.85, score.accuracy
