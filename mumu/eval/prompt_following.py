"""Does a trained model follow its prompt? A toy task with a known answer, and the scores that check it.

K subjects (bundled emoji with distinct colours), each with its own target picture: the emoji centred on a
background colour of its own. Every subject is prompted two ways that name the same target:
- text:  "a cactus"
- image: "a <image>" (the emoji itself on white; no word names it, so only the image path can tell).
A model trained on (prompt -> target) pairs is then sampled for every prompt from the *same* noise seeds,
and each image is assigned to its nearest target in pixel space. Chance is 1/K; a model that ignores its
condition draws the same image for every prompt from one seed, so at most one prompt per seed can be right.

Used by tests/test_prompt_following.py (the model learns its condition, in CI) and bench/recipe_probe.py
(which recipe makes a from-scratch UNet learn it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mumu.data.scenes import PLAIN, load_emoji_names
from mumu.train.data import Example

KINDS = ("text", "image")
# (emoji file, background colour): subjects far apart in colour, on backgrounds far apart too.
TOY_SUBJECTS = (("1f335.webp", "pink"), ("1f40b.webp", "yellow"), ("1f34c.webp", "blue"), ("1f345.webp", "teal"),
                ("1f9c1.webp", "green"), ("1f98e.webp", "purple"))


@dataclass(frozen=True)
class ToySubject:
    name: str
    target: Image.Image  # RGB, size x size: the picture every prompt of this subject should produce
    prompt_image: Image.Image  # RGB: the emoji on white, as a prompt segment
    mask: np.ndarray  # bool, size x size: where the emoji is in the target (the entity mask)
    emoji: Image.Image  # RGBA, as bundled
    background: tuple[int, int, int]

    def placed(self, rng: np.random.Generator, scale: float) -> tuple[Image.Image, np.ndarray]:
        """A target with the emoji at `scale` of the side at a random position, and its mask there."""
        size, side = self.target.size[0], int(self.target.size[0] * scale)
        x, y = (int(v) for v in rng.integers(0, size - side + 1, 2))
        return _composed(self.emoji, side, (x, y), size, self.background)

    def prompt(self, kind: str) -> list:
        if kind == "text":
            return [f"a {self.name}"]
        if kind == "image":
            return ["a", self.prompt_image]
        raise ValueError(f"unknown prompt kind {kind!r}: choose one of {KINDS}")


def toy_subjects(emoji_dir: str | Path, k: int = 4, size: int = 64, scale: float = 0.6) -> list[ToySubject]:
    if not 2 <= k <= len(TOY_SUBJECTS):
        raise ValueError(f"k must be in 2..{len(TOY_SUBJECTS)}")
    emoji_dir = Path(emoji_dir)
    names = load_emoji_names(emoji_dir)
    out = []
    for file, colour in TOY_SUBJECTS[:k]:
        emoji = Image.open(emoji_dir / file).convert("RGBA")
        side = int(size * scale)
        target, mask = _composed(emoji, side, ((size - side) // 2, (size - side) // 2), size, PLAIN[colour])
        white = Image.new("RGBA", emoji.size, (255, 255, 255, 255))
        prompt_image = Image.alpha_composite(white, emoji).convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
        out.append(ToySubject(names[file], target, prompt_image, mask, emoji, PLAIN[colour]))
    return out


def _composed(emoji: Image.Image, side: int, xy: tuple[int, int], size: int,
              background: tuple[int, int, int]) -> tuple[Image.Image, np.ndarray]:
    """(RGB picture: the emoji resized to side x side at xy on the background, bool mask of its opaque pixels)."""
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    layer.paste(emoji.resize((side, side), Image.Resampling.LANCZOS), xy)
    target = Image.alpha_composite(Image.new("RGBA", (size, size), (*background, 255)), layer).convert("RGB")
    return target, np.asarray(layer)[:, :, 3] > 127


def toy_batches(subjects: Sequence[ToySubject], batch_size: int, seed: int, start_step: int = 0,
                kinds: Sequence[str] = KINDS, shuffle_targets: bool = False,
                placed_scale: float | None = None) -> Iterator[list[Example]]:
    """Endless batches of (prompt -> target) Examples; batch i depends only on (seed, i), so a resumed run
    reads the same stream. shuffle_targets=True pairs each prompt with a random subject's target instead:
    the condition then carries nothing, which a test of the task must detect. placed_scale: each target
    instead shows the emoji at that fraction of the side at a random position, its entity mask with it (where
    a subject is can then only be read from the noisy picture, as in a real scene)."""
    i = start_step
    while True:
        rng = np.random.default_rng([seed, i])
        batch = []
        for j in range(batch_size):
            s = subjects[int(rng.integers(len(subjects)))]
            kind = kinds[int(rng.integers(len(kinds)))]
            t = subjects[int(rng.integers(len(subjects)))] if shuffle_targets else s
            target, mask = (t.target, t.mask) if placed_scale is None else t.placed(rng, placed_scale)
            batch.append(Example(f"toy-{i}-{j}", s.prompt(kind), target, [mask] if kind == "image" else []))
        yield batch
        i += 1


def toy_iterate(subjects: Sequence[ToySubject], **options):
    """An `iterate` for mumu.train.loop.train: (data_urls, stage, seed, start_step) -> toy batches."""
    def iterate(_urls, stage, seed, start_step=0, **_shard):
        return toy_batches(subjects, stage.batch_size, seed, start_step, **options)
    return iterate


def _pixels(images: Sequence[Image.Image], size: int) -> np.ndarray:
    return np.stack([np.asarray(im.convert("RGB").resize((size, size), Image.Resampling.BOX), np.float32)
                     for im in images])


def nearest_target(images: Sequence[Image.Image], targets: Sequence[Image.Image]) -> np.ndarray:
    """Index of the nearest target (L2 in RGB pixel space at the targets' size) for each image."""
    size = targets[0].size[0]
    x, t = _pixels(images, size).reshape(len(images), -1), _pixels(targets, size).reshape(len(targets), -1)
    d = (x**2).sum(1)[:, None] - 2 * x @ t.T + (t**2).sum(1)[None, :]
    return d.argmin(1)


def prompt_spread(images_by_prompt: Sequence[Sequence[Image.Image]]) -> float:
    """Mean std (0..255) across prompts of the images drawn from the same noise seed: 0 when the prompt
    changes nothing."""
    size = images_by_prompt[0][0].size[0]
    arr = np.stack([_pixels(imgs, size) for imgs in images_by_prompt])  # [P, n, H, W, 3]
    return float(arr.std(axis=0).mean())


@dataclass
class FollowingScore:
    accuracy: dict[str, float]  # per prompt kind: share of images nearest to their own subject's target
    spread: dict[str, float]  # per prompt kind: prompt spread (0..255)
    chance: float
    images: dict[str, list[list[Image.Image]]]  # kind -> per subject -> n images


def score_following(sampler, subjects: Sequence[ToySubject], n: int = 4, seed: int = 0, *,
                    kinds: Sequence[str] = KINDS, steps: int | None = None,
                    guidance_scale: float | None = None) -> FollowingScore:
    """Sample n images per (subject, kind), image i of every prompt from seed + i, and score them."""
    targets = [s.target for s in subjects]
    acc, spread, images = {}, {}, {}
    for kind in kinds:
        imgs = sampler.generate_batch([s.prompt(kind) for s in subjects], n=n, seed=seed, steps=steps,
                                      guidance_scale=guidance_scale)
        picked = [nearest_target(row, targets) for row in imgs]
        acc[kind] = float(np.mean([np.mean(p == j) for j, p in enumerate(picked)]))
        spread[kind] = prompt_spread(imgs)
        images[kind] = imgs
    return FollowingScore(acc, spread, 1.0 / len(subjects), images)
