"""Does a trained model follow its prompt? A toy task with a known answer, and the scores that check it.

K subjects (bundled emoji with distinct colours), each with its own target picture: the emoji centred on a
background colour of its own. Every subject is prompted two ways that name the same target:
- text:  "a cactus"
- image: "a <image>" (the emoji itself on white; no word names it, so only the image path can tell).
A model trained on (prompt -> target) pairs is then sampled for every prompt from the *same* noise seeds,
and each image is assigned to its nearest target in pixel space. Chance is 1/K; a model that ignores its
condition draws the same image for every prompt from one seed, so at most one prompt per seed can be right.

Two subjects in one prompt ("a cactus and a whale", or each one's picture in its place) name a target with the
first subject's panel on the left half and the second's on the right: each half is scored against the K
panels, so the model must read both entities and their order (score_pairs).

Used by tests/test_prompt_following.py, tests/test_multi_entity_following.py and tests/test_composition.py (the
model learns its condition, in CI; the last on pairs held out of training), by the tests of the recipe's parts
(the attention-mask loss, prompt-image augmentation, size micro-conditioning: a share of targets at low resolution)
and bench/recipe_probe.py (which recipe makes a from-scratch UNet learn it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mumu.config.train import AugmentConfig
from mumu.data.scenes import PLAIN, load_emoji_names
from mumu.train.augment import augment_prompt_images
from mumu.train.data import Example

KINDS = ("text", "image")
# px a side of toy_batches' low_res targets: at 16 the tiny VAE's round trip of a full-size target is nearer the
# blurred one; at 4 (and 8) each round trip stays nearest its own.
LOW_RES = 4
PANEL_SCALE = 0.85  # the emoji's side in a two-subject target, as a share of its half's width
# (emoji file, background colour): subjects far apart in colour, on backgrounds far apart too.
TOY_SUBJECTS = (("1f335.webp", "pink"), ("1f40b.webp", "yellow"), ("1f34c.webp", "blue"), ("1f345.webp", "teal"),
                ("1f9c1.webp", "green"), ("1f98e.webp", "purple"), ("1f955.webp", "gray"), ("1f98b.webp", "white"))


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
        return _composed(self.emoji, side, (x, y), (size, size), self.background)

    def panel(self) -> tuple[Image.Image, np.ndarray]:
        """The subject's half of a two-subject target: the emoji centred in a half-width panel on its background."""
        size = self.target.size[0]
        width, side = size // 2, int(size // 2 * PANEL_SCALE)
        return _composed(self.emoji, side, ((width - side) // 2, (size - side) // 2), (width, size), self.background)

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
        target, mask = _composed(emoji, side, ((size - side) // 2, (size - side) // 2), (size, size), PLAIN[colour])
        white = Image.new("RGBA", emoji.size, (255, 255, 255, 255))
        prompt_image = Image.alpha_composite(white, emoji).convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
        out.append(ToySubject(names[file], target, prompt_image, mask, emoji, PLAIN[colour]))
    return out


def _composed(emoji: Image.Image, side: int, xy: tuple[int, int], canvas: tuple[int, int],
              background: tuple[int, int, int]) -> tuple[Image.Image, np.ndarray]:
    """(RGB picture of `canvas` (w, h): the emoji resized to side x side at xy on the background, bool mask of its
    opaque pixels)."""
    layer = Image.new("RGBA", canvas, (0, 0, 0, 0))
    layer.paste(emoji.resize((side, side), Image.Resampling.LANCZOS), xy)
    target = Image.alpha_composite(Image.new("RGBA", canvas, (*background, 255)), layer).convert("RGB")
    return target, np.asarray(layer)[:, :, 3] > 127


def pair_prompt(first: ToySubject, second: ToySubject, kind: str) -> list:
    """A two-entity prompt: "a cactus and a whale", or each subject's picture in their place."""
    if kind == "text":
        return [f"a {first.name} and a {second.name}"]
    if kind == "image":
        return ["a", first.prompt_image, "and a", second.prompt_image]
    raise ValueError(f"unknown prompt kind {kind!r}: choose one of {KINDS}")


def pair_target(first: ToySubject, second: ToySubject) -> tuple[Image.Image, list[np.ndarray]]:
    """The picture a two-entity prompt names: the first subject's panel on the left half, the second's on the
    right (so the order of the prompt decides where each goes), and each entity's mask in it."""
    size = first.target.size[0]
    target, masks = Image.new("RGB", (size, size)), []
    for x, subject in ((0, first), (size // 2, second)):
        panel, panel_mask = subject.panel()
        target.paste(panel, (x, 0))
        mask = np.zeros((size, size), bool)
        mask[:, x:x + panel.size[0]] = panel_mask
        masks.append(mask)
    return target, masks


def pair_halves(image: Image.Image, size: int) -> tuple[Image.Image, Image.Image]:
    """The left and right halves of a two-entity picture, seen at the targets' size: where pair_target puts the
    first and the second subject."""
    whole = image.convert("RGB").resize((size, size), Image.Resampling.BOX)
    return whole.crop((0, 0, size // 2, size)), whole.crop((size // 2, 0, size, size))


def drawn_pairs(images: Sequence[Image.Image], subjects: Sequence[ToySubject]) -> np.ndarray:
    """[n, 2] int: for each two-entity picture, the subject whose panel its left half is nearest to, and its right
    half's (pair_halves, nearest_target)."""
    size, panels = subjects[0].target.size[0], [s.panel()[0] for s in subjects]
    halves = [pair_halves(im, size) for im in images]
    return np.stack([nearest_target([h[0] for h in halves], panels),
                     nearest_target([h[1] for h in halves], panels)], axis=1)


def toy_batches(subjects: Sequence[ToySubject], batch_size: int, seed: int, start_step: int = 0,
                kinds: Sequence[str] = KINDS, shuffle_targets: bool = False,
                placed_scale: float | None = None, entities: int = 1,
                augment: AugmentConfig | None = None,
                pairs: Sequence[tuple[int, int]] | None = None,
                low_res: float = 0.0, low_res_upsampled: bool = False) -> Iterator[list[Example]]:
    """Endless batches of (prompt -> target) Examples; batch i depends only on (seed, i), so a resumed run
    reads the same stream. shuffle_targets=True pairs each prompt with a random subject's target instead:
    the condition then carries nothing, which a test of the task must detect. placed_scale: each target
    instead shows the emoji at that fraction of the side at a random position, its entity mask with it (where
    a subject is can then only be read from the noisy picture, as in a real scene). entities=2: each prompt
    names an ordered pair of distinct subjects, drawn side by side in that order (pair_prompt, pair_target), out of
    `pairs` (subject indices) when given, else out of every ordered pair.
    augment: MUMU's conditioning-image augmentation, drawn per example as the training loader does
    (mumu.train.augment; share 0 or None leaves the stream as it is).
    low_res: the share of examples whose target is given at LOW_RES px a side (the loader scales it up to the model's
    resolution, blurred, and tells the UNet its original size, as for any small training image: SDXL's size
    micro-conditioning); low_res_upsampled=True hands over the same blurred pixels already at full size, so their
    original size is lost (the cut of that conditioning)."""
    if entities not in (1, 2):
        raise ValueError(f"entities must be 1 or 2, not {entities}")
    if entities == 2 and placed_scale is not None:
        raise ValueError("placed_scale places one subject; a two-subject target has each in its half")
    if not 0.0 <= low_res <= 1.0:
        raise ValueError(f"low_res is a share of examples (0..1), got {low_res}")
    if pairs is not None and (entities != 2 or not pairs):
        raise ValueError("pairs names the ordered pairs of a two-subject stream: entities=2 and at least one pair")
    i = start_step
    while True:
        rng = np.random.default_rng([seed, i])
        # Which targets are low-res comes from a generator of its own: the examples are the default stream's.
        at_low_res = np.random.default_rng([seed, i, 1]).random(batch_size) < low_res
        batch = []
        for j in range(batch_size):
            prompt, target, masks = (_single_example(subjects, rng, kinds, shuffle_targets, placed_scale)
                                     if entities == 1 else _pair_example(subjects, rng, kinds, shuffle_targets, pairs))
            if at_low_res[j]:
                target, masks = _low_res(target, masks, low_res_upsampled)
            if augment is not None:
                prompt, _ = augment_prompt_images(prompt, augment, rng)
            batch.append(Example(f"toy-{i}-{j}", prompt, target, masks))
        yield batch
        i += 1


def _single_example(subjects, rng, kinds, shuffle_targets, placed_scale) -> tuple[list, Image.Image, list]:
    s = subjects[int(rng.integers(len(subjects)))]
    kind = kinds[int(rng.integers(len(kinds)))]
    t = subjects[int(rng.integers(len(subjects)))] if shuffle_targets else s
    target, mask = (t.target, t.mask) if placed_scale is None else t.placed(rng, placed_scale)
    return s.prompt(kind), target, [mask] if kind == "image" else []


def _pair_example(subjects, rng, kinds, shuffle_targets, pairs) -> tuple[list, Image.Image, list]:
    drawn = rng.choice(len(subjects), 2, replace=False) if pairs is None else pairs[int(rng.integers(len(pairs)))]
    first, second = (subjects[int(k)] for k in drawn)
    kind = kinds[int(rng.integers(len(kinds)))]
    shown = [subjects[int(k)] for k in rng.choice(len(subjects), 2, replace=False)] if shuffle_targets else (first, second)
    target, masks = pair_target(*shown)
    return pair_prompt(first, second, kind), target, masks if kind == "image" else []


def _low_res(target: Image.Image, masks: list[np.ndarray], upsampled: bool) -> tuple[Image.Image, list[np.ndarray]]:
    """The target at LOW_RES px (box-filtered) with its masks; upsampled: scaled back to full size as the loader
    would (bicubic), the masks unchanged."""
    small = target.resize((LOW_RES, LOW_RES), Image.Resampling.BOX)
    if upsampled:
        return small.resize(target.size, Image.Resampling.BICUBIC), masks
    return small, [_shrink_mask(m) for m in masks]


def _shrink_mask(mask: np.ndarray) -> np.ndarray:
    pixels = Image.fromarray(mask.astype(np.uint8) * 255).resize((LOW_RES, LOW_RES), Image.Resampling.BOX)
    return np.asarray(pixels) > 127


def low_res_target(subject: ToySubject) -> Image.Image:
    """What a low_res example of `subject` looks like at the model's resolution: its target through LOW_RES px."""
    return _low_res(subject.target, [], upsampled=True)[0]


def toy_iterate(subjects: Sequence[ToySubject], **options):
    """An `iterate` for mumu.train.loop.train: (data_urls, stage, seed, start_step) -> toy batches, with the
    stage's batch size and prompt-image augmentation (unless options name their own `augment`)."""
    def iterate(_urls, stage, seed, start_step=0, **_shard):
        return toy_batches(subjects, stage.batch_size, seed, start_step, **{"augment": stage.augment, **options})
    return iterate


def _pixels(images: Sequence[Image.Image], size: tuple[int, int]) -> np.ndarray:
    return np.stack([np.asarray(im.convert("RGB").resize(size, Image.Resampling.BOX), np.float32) for im in images])


def nearest_target(images: Sequence[Image.Image], targets: Sequence[Image.Image]) -> np.ndarray:
    """Index of the nearest target (L2 in RGB pixel space at the targets' size) for each image."""
    size = targets[0].size
    x, t = _pixels(images, size).reshape(len(images), -1), _pixels(targets, size).reshape(len(targets), -1)
    d = (x**2).sum(1)[:, None] - 2 * x @ t.T + (t**2).sum(1)[None, :]
    return d.argmin(1)


def prompt_spread(images_by_prompt: Sequence[Sequence[Image.Image]]) -> float:
    """Mean std (0..255) across prompts of the images drawn from the same noise seed: 0 when the prompt
    changes nothing."""
    size = images_by_prompt[0][0].size
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


def ordered_pairs(k: int) -> list[tuple[int, int]]:
    return [(a, b) for a in range(k) for b in range(k) if a != b]


@dataclass
class PairScore:
    # per prompt kind: share of images whose left half is nearest to the first subject's panel ("first"), whose
    # right half is nearest to the second's ("second"), both at once ("both"), and both subjects drawn, in this
    # order or the other ("either")
    accuracy: dict[str, dict[str, float]]
    chance: float  # of one half: 1/K
    images: dict[str, list[list[Image.Image]]]  # kind -> per ordered pair asked for (ordered_pairs) -> n images


def score_pairs(sampler, subjects: Sequence[ToySubject], n: int = 4, seed: int = 0, *,
                kinds: Sequence[str] = KINDS, pairs: Sequence[tuple[int, int]] | None = None) -> PairScore:
    """Sample n images for every ordered pair of subjects (or each of `pairs`, as subject indices) and prompt kind
    (image i of every prompt from seed + i), and assign each half of each image to its nearest subject panel. By
    default both orders of every pair are asked for, so a model that ignores the order of its prompt gets at most
    half of the halves right."""
    pairs = pairs or ordered_pairs(len(subjects))
    accuracy, images = {}, {}
    for kind in kinds:
        imgs = sampler.generate_batch([pair_prompt(subjects[a], subjects[b], kind) for a, b in pairs], n=n, seed=seed)
        drawn = np.stack([drawn_pairs(row, subjects) for row in imgs])  # [pairs, n, 2]
        lefts, rights = drawn[..., 0], drawn[..., 1]
        a, b = (np.array(side)[:, None] for side in zip(*pairs))
        first, second = lefts == a, rights == b
        accuracy[kind] = {"first": float(first.mean()), "second": float(second.mean()),
                          "both": float((first & second).mean()),
                          "either": float(((first & second) | ((lefts == b) & (rights == a))).mean())}
        images[kind] = imgs
    return PairScore(accuracy, 1.0 / len(subjects), images)
