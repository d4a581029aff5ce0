"""Subjects never trained on: does the model take a subject from its image alone?

A toy task in the form of mumu.eval.prompt_following, over many emoji subjects instead of a few: the prompt is a
subject's picture (on white, framed as it comes) in a scene its text sets,
- UNIMO-G's form: "a <image> on a pink background",
- MUMU's form:    "a <image> cactus on a pink background" (the picture before the subject's name),
and the target is the subject centred at SCALE of the side on that background. Trained on some subjects, the model
is asked for subjects held out of all training; each sample is named by its nearest held-out target in pixels
(shape and colour together) and by mumu.eval.identify (colour histogram and silhouette), both among the held-out
subjects drawn on the asked background (chance 1/K), and its background is read against the colour the text asked
for (adherence). The copy score says how close a sample is to its reference pasted unchanged, against its distance
to the subject's target: a model that pastes its input scores high there (mumu.eval.copying's idea on the toy).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from mumu.data.scenes import PLAIN, load_emoji_names
from mumu.eval.identify import border_colour, describe, similarity
from mumu.eval.prompt_following import nearest_target
from mumu.train.data import Example

FORMS = ("unimo", "mumu")
SCALE = 0.7  # the subject's side in a target, as a share of the picture's
# Backgrounds the text can ask for: mumu.data.scenes' plain colours whose names the tiny tokenizer has as words.
COLOURS = ("blue", "green", "yellow", "pink", "gray", "white", "purple")


@dataclass(frozen=True)
class Subject:
    name: str
    emoji: Image.Image  # RGBA as bundled
    reference: Image.Image  # RGB size x size: the emoji on white, framed as it comes (the prompt's picture)
    # The subject scaled onto a transparent canvas, per side: the training stream draws each subject many times,
    # and resizing the bundled 256 px emoji every time was a fifth of a tiny model's step.
    _layers: dict[int, Image.Image] = field(default_factory=dict, compare=False, repr=False)

    def target(self, colour: str, size: int) -> Image.Image:
        """The subject centred at SCALE of the side on the colour's background."""
        canvas = Image.new("RGBA", (size, size), (*PLAIN[colour], 255))
        return Image.alpha_composite(canvas, self._layer(size)).convert("RGB")

    def mask(self, size: int) -> np.ndarray:
        """bool [size, size]: where the subject is in its targets (its entity mask)."""
        return np.asarray(self._layer(size))[:, :, 3] > 127

    def _layer(self, size: int) -> Image.Image:
        if size not in self._layers:
            side = int(size * SCALE)
            layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
            layer.paste(self.emoji.resize((side, side), Image.Resampling.LANCZOS), ((size - side) // 2,) * 2)
            self._layers[size] = layer
        return self._layers[size]

    def prompt(self, colour: str, form: str) -> list:
        if form == "unimo":
            return ["a", self.reference, f"on a {colour} background"]
        if form == "mumu":
            return ["a", self.reference, f"{self.name} on a {colour} background"]
        raise ValueError(f"unknown prompt form {form!r}: choose one of {FORMS}")


def load_subjects(emoji_dir: str | Path, files: Sequence[str], size: int = 64) -> list[Subject]:
    emoji_dir = Path(emoji_dir)
    names = load_emoji_names(emoji_dir)
    out = []
    for file in files:
        path = emoji_dir / "images" / file if (emoji_dir / "images" / file).exists() else emoji_dir / file
        emoji = Image.open(path).convert("RGBA")
        white = Image.new("RGBA", emoji.size, (255, 255, 255, 255))
        reference = Image.alpha_composite(white, emoji).convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
        out.append(Subject(names[file], emoji, reference))
    return out


def split_subjects(emoji_dir: str | Path, held_out: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(training files, held-out files): `held_out` emoji drawn under `seed`, never in training."""
    files = sorted(load_emoji_names(emoji_dir))
    rng = np.random.default_rng(seed)
    held = set(rng.choice(len(files), held_out, replace=False).tolist())
    return [f for i, f in enumerate(files) if i not in held], [f for i, f in enumerate(files) if i in held]


def unseen_batches(subjects: Sequence[Subject], batch_size: int, seed: int, start_step: int = 0, *,
                   size: int = 64, forms: Sequence[str] = FORMS, colours: Sequence[str] = COLOURS
                   ) -> Iterator[list[Example]]:
    """Endless batches: a random subject, prompt form and background each; batch i depends only on (seed, i)."""
    i = start_step
    while True:
        rng = np.random.default_rng([seed, i])
        batch = []
        for j in range(batch_size):
            s = subjects[int(rng.integers(len(subjects)))]
            colour, form = colours[int(rng.integers(len(colours)))], forms[int(rng.integers(len(forms)))]
            batch.append(Example(f"unseen-{i}-{j}", s.prompt(colour, form), s.target(colour, size), [s.mask(size)]))
        yield batch
        i += 1


def unseen_iterate(subjects: Sequence[Subject], **options):
    """An `iterate` for mumu.train.loop.train over unseen_batches, with the stage's batch size."""
    def iterate(_urls, stage, seed, start_step=0, **_shard):
        return unseen_batches(subjects, stage.batch_size, seed, start_step, **options)
    return iterate


@dataclass
class UnseenScore:
    pixels: float  # share of samples whose nearest target (of the K subjects, same background) is their own
    identified: float  # the same by mumu.eval.identify's colour-and-silhouette description
    adherence: float  # share of samples whose background is nearest the colour the text asked for
    copy: float  # mean over samples of 1 if nearer the reference pasted unchanged than the subject's target
    chance: float
    images: list[list[Image.Image]]  # per subject, n samples


def score_unseen(sampler, subjects: Sequence[Subject], colour: str, form: str, n: int = 2, seed: int = 0
                 ) -> UnseenScore:
    images = sampler.generate_batch([s.prompt(colour, form) for s in subjects], n=n, seed=seed)
    size = images[0][0].size[0]
    targets = [s.target(colour, size) for s in subjects]
    flat = [im for row in images for im in row]
    owner = np.repeat(np.arange(len(subjects)), n)
    pixels = float(np.mean(nearest_target(flat, targets) == owner))
    described = np.stack([describe(t) for t in targets])
    sims = similarity(np.stack([describe(im) for im in flat]), described)
    identified = float(np.mean(sims.argmax(1) == owner))
    palette = np.array([PLAIN[c] for c in COLOURS], np.float64)
    asked = COLOURS.index(colour)
    borders = np.stack([border_colour(np.asarray(im.convert("RGB"), np.float64)) for im in flat])
    adherence = float(np.mean(((borders[:, None] - palette[None]) ** 2).sum(-1).argmin(1) == asked))
    pasted = [subjects[k].reference.resize((size, size)) for k in owner]
    copy = float(np.mean([_distance(im, p) < _distance(im, targets[k]) for im, p, k in zip(flat, pasted, owner)]))
    return UnseenScore(pixels, identified, adherence, copy, 1.0 / len(subjects), images)


def _distance(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a.convert("RGB"), np.float32) - np.asarray(b.convert("RGB"), np.float32)).mean())
