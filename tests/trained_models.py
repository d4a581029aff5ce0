"""Trained toy models, each trained once per test session and shared by every learning test that reads it.

One training carries several claims where its data allows: the `singles` model learns K = 4 subjects from text
and image prompts with half of its prompt images augmented and a share of its targets at low resolution, and is
read by the prompt-following, augmentation and size-conditioning tests; the `pairs` model learns 48 of the 56
ordered pairs of K = 8 subjects and is read by the entity-order and composition tests. `unimo-g` is UNIMO-G's
prompt path (another architecture, so a model of its own); `attention` is trained with the attention-mask loss on
targets that place their subject at random; `unseen` learns mumu.eval.unseen's task on 374 of the bundled 390 emoji,
the other 16 held out of its training (tests/test_unseen_subjects.py).

The training seed is `MUMU_TOY_SEED` (default 0, the seed CI runs): bench/learning_runs.py runs the learning tests
at other seeds and kernel sets to set and check their bars, and under each of CUTS (MUMU_TOY_CUT). What each model
costs and which tests read it: docs/recipe.md ("The shared trained models").
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from mumu import FLUENT_EMOJI_DIR, SAMPLES_DIR
from mumu.config import load_profile
from mumu.config.base import ModelSource
from mumu.eval.prompt_following import ToySubject, ordered_pairs, toy_subjects
from mumu.eval.unseen import Subject, load_subjects, split_subjects, unseen_iterate
from mumu.generate import MumuSampler, load_model
from tests.toy_training import toy_profile, train_on_stream, train_on_toy

EMOJI = SAMPLES_DIR.parent / "emoji"
# The composition task's pairs held out of the `pairs` model's training: every subject is held out with exactly
# one partner, in both orders, and trained with the six others on either side.
HELD_OUT_PAIRS = [(0, 1), (1, 0), (2, 3), (3, 2), (4, 5), (5, 4), (6, 7), (7, 6)]
TRAINED_PAIRS = [p for p in ordered_pairs(8) if p not in HELD_OUT_PAIRS]
LOW_RES_SHARE = 0.3  # of the singles model's targets: under half, so the size it saw most (its default) is full size
TINY_ATTN_WEIGHT = load_profile("tiny").train.tune.attn_loss.weight
UNSEEN_STEPS, UNSEEN_COLOURS = 1400, ("blue", "yellow", "pink", "gray")
# UNIMO-G's prompt path: the MLLM frozen, images read through its perceiver; only the connector and UNet train.
UNIMO_G = {"model.encoder.train_language_model": "frozen", "model.encoder.lora.enabled": False,
           "model.encoder.lora_projector": False, "model.encoder.bypass_resampler": False}


@dataclass(frozen=True)
class ToyModelSpec:
    k: int  # subjects: mumu.eval.prompt_following.TOY_SUBJECTS[:k], or for the unseen task the k held out
    steps: int
    overrides: dict = field(default_factory=dict)  # profile overrides over tests.toy_training.toy_profile
    stream: dict = field(default_factory=dict)  # toy_iterate's (or unseen_iterate's) options
    task: Literal["toy", "unseen"] = "toy"  # mumu.eval.prompt_following's task, or mumu.eval.unseen's


SPECS: dict[str, ToyModelSpec] = {
    "singles": ToyModelSpec(4, 600, {"train.tune.augment.share": 0.5}, {"low_res": LOW_RES_SHARE}),
    "unimo-g": ToyModelSpec(4, 400, UNIMO_G),
    # Without crop augmentation, which slows the two-subject task.
    "pairs": ToyModelSpec(8, 1500, {"train.tune.augment.share": 0.0}, {"entities": 2, "pairs": TRAINED_PAIRS}),
    "attention": ToyModelSpec(4, 150, {"train.tune.attn_loss.weight": TINY_ATTN_WEIGHT},
                              {"kinds": ("image",), "placed_scale": 0.45}),
    # bench/unseen_subjects.py's recipe (with the attention-mask loss at the profile's weight) at the steps a CI run
    # affords: the tiny profile's 4 image tokens a picture, and 4 of the task's 7 backgrounds, which the model learns
    # to take from the text in fewer steps (at 1,400 steps with all 7, one seed of three kept none).
    "unseen": ToyModelSpec(16, UNSEEN_STEPS, {"train.tune.augment.share": 0.0,
                                              "train.tune.attn_loss.weight": TINY_ATTN_WEIGHT},
                           {"colours": UNSEEN_COLOURS}, task="unseen"),
}


@dataclass(frozen=True)
class Cut:
    """One part of a shared model's training removed, to show what the tests that read it owe to that part."""

    model: str  # the SPECS entry it changes
    tests: tuple[str, ...]  # pytest node ids (or files) whose claim the part carries: they must fail under the cut
    overrides: dict | Callable[[], dict] = field(default_factory=dict)
    stream: dict = field(default_factory=dict)


def _unfitted_vae() -> dict:
    """The fitted VAE's architecture with random weights (seeded): the VAE before mumu.train.fit_vae."""
    from diffusers import AutoencoderKL

    config = AutoencoderKL.load_config(ModelSource(pretrained="bundled:tiny_vae").location)
    return {"model.decoder.vae": {"config": {k: v for k, v in config.items() if not k.startswith("_")}, "seed": 0}}


_FOLLOWS = "tests/test_prompt_following.py::test_trained_model_follows_text_and_image_prompts[singles]"
# Cuts that document the recipe rather than guard a code path: `python -m bench.learning_runs --cuts` trains
# them (MUMU_TOY_CUT).
CUTS: dict[str, Cut] = {
    "shuffled-prompts": Cut("singles", (_FOLLOWS,), stream={"shuffle_targets": True}),
    "epsilon-prediction": Cut("singles", (_FOLLOWS,), {"model.decoder.prediction_type": "epsilon",
                                                       "model.decoder.rescale_betas_zero_snr": False}),
    "unfitted-vae": Cut("singles", (_FOLLOWS,), _unfitted_vae),
    "not-augmented": Cut("singles", ("tests/test_augmentation_learning.py::"
                                     "test_augmented_training_finds_the_subject_in_new_framings",),
                         {"train.tune.augment.share": 0.0}),
    "low-res-upsampled": Cut("singles", ("tests/test_size_conditioning_learning.py::"
                                         "test_trained_model_draws_the_resolution_it_is_told",),
                             stream={"low_res_upsampled": True}),
    "no-attention-loss": Cut("attention", ("tests/test_attention_loss_learning.py::"
                                           "test_trained_attention_concentrates_on_the_entity_masks",),
                             {"train.tune.attn_loss.weight": 0.0}),
    "mllm-without-lora": Cut("pairs", ("tests/test_multi_entity_following.py::"
                                       "test_trained_model_places_both_entities_in_order",),
                             {"model.encoder.train_language_model": "frozen", "model.encoder.lora.enabled": False}),
}


def training_seed() -> int:
    return int(os.environ.get("MUMU_TOY_SEED", "0"))


def active_cut() -> tuple[str, Cut] | None:
    """MUMU_TOY_CUT names a CUTS entry to apply to its model for this session (unset in CI)."""
    name = os.environ.get("MUMU_TOY_CUT")
    if not name:
        return None
    if name not in CUTS:
        raise ValueError(f"MUMU_TOY_CUT={name!r} is not one of {', '.join(CUTS)}")
    return name, CUTS[name]


def seed_overrides(seed: int) -> dict:
    """Another training seed: the stream and the from-scratch UNet's initial weights (seed 0 is the profile's own).
    The MLLM keeps its weights: it stands in for a pretrained checkpoint, which no training seed redraws (drawn anew,
    a frozen random perceiver can stop passing images on: UNIMO-G's path then sees none, image accuracy 0.25)."""
    return {"runtime.seed": seed, "model.decoder.unet.seed": 5 + 100 * seed}


def spec_profile(spec: ToyModelSpec, seed: int, cut: Cut | None = None):
    cut_overrides = (cut.overrides() if callable(cut.overrides) else cut.overrides) if cut else {}
    return toy_profile(spec.steps, **{**spec.overrides, **cut_overrides, **seed_overrides(seed)})


@dataclass
class TrainedToyModel:
    spec: ToyModelSpec
    subjects: list[ToySubject] | list[Subject]  # the subjects it is trained on
    model_dir: Path
    profile: object

    def sampler(self, **sampler_updates) -> MumuSampler:
        cfg = self.profile.eval.sampler.model_copy(update=sampler_updates)
        return MumuSampler(load_model(self.model_dir), cfg)


def subjects_of(name: str) -> list[ToySubject]:
    """The subjects SPECS[name] is trained on, without training it."""
    spec = SPECS[name]
    return toy_subjects(EMOJI, spec.k, spec_profile(spec, 0).model.decoder.resolution)


def unseen_split() -> tuple[list[Subject], list[Subject]]:
    """(trained, held out): the `unseen` model's training subjects and the SPECS["unseen"].k never in its training
    (bench/unseen_subjects.py's split, so they are held out of the bench's runs too)."""
    trained, held = split_subjects(FLUENT_EMOJI_DIR, SPECS["unseen"].k, seed=0)
    size = spec_profile(SPECS["unseen"], 0).model.decoder.resolution
    return load_subjects(FLUENT_EMOJI_DIR, trained, size), load_subjects(FLUENT_EMOJI_DIR, held, size)


def train_toy_model(name: str, out: Path, seed: int | None = None) -> TrainedToyModel:
    """The SPECS[name] model at this training seed (default: the session's), with the session's cut if it is
    this model's."""
    spec = SPECS[name]
    seed = training_seed() if seed is None else seed
    cut = active_cut()
    cut = cut[1] if cut and cut[1].model == name else None
    profile = spec_profile(spec, seed, cut)
    stream = {**spec.stream, **(cut.stream if cut else {})}
    if spec.task == "unseen":
        subjects = unseen_split()[0]
        return TrainedToyModel(spec, subjects, train_on_stream(profile, unseen_iterate(subjects, **stream), out),
                               profile)
    subjects = subjects_of(name)
    return TrainedToyModel(spec, subjects, train_on_toy(profile, subjects, out, **stream), profile)


@pytest.fixture(scope="session")
def toy_models(tmp_path_factory) -> Callable[[str], TrainedToyModel]:
    """toy_models(name): the SPECS[name] model at the session's training seed, trained on first use."""
    trained: dict[str, TrainedToyModel] = {}

    def get(name: str) -> TrainedToyModel:
        if name not in trained:
            trained[name] = train_toy_model(name, tmp_path_factory.mktemp(f"toy-{name}"))
        return trained[name]

    return get
