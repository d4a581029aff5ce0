"""Composed emoji scenes: text-image pairs whose entity boxes and masks are known exactly.

1–3 RGBA emoji are scaled and pasted (alpha-composited) at seeded positions on a plain or gradient
background. The caption is built from their names in left-to-right order ("a cactus and a hot dog on
a blue background"). Ground truth per object: mask = alpha > `alpha_threshold` of the pasted emoji
minus everything pasted later on top of it (occlusion); box = that visible mask's bounding box
(x1/y1 exclusive). By default emoji do not overlap; `overlap=True` lets later ones cover earlier ones
(objects left with less than half of their pixels visible are re-drawn).

Used by tests (ground-truth detector/segmenter fakes), by the bundled samples, and by ablations.
`python -m mumu.data.scenes --out DIR` renders a deterministic set (see `main`).
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

PLAIN = {
    "blue": (72, 118, 214),
    "green": (96, 172, 96),
    "yellow": (238, 206, 84),
    "pink": (236, 160, 190),
    "gray": (150, 150, 150),
    "white": (250, 250, 250),
    "purple": (150, 104, 200),
    "teal": (64, 160, 160),
}


# Colour names an emoji is described with (`describe_colours`), each one word of mumu/resources/words.txt.
COLOUR_NAMES = {
    "red": (210, 40, 45),
    "orange": (245, 145, 30),
    "yellow": (250, 210, 60),
    "green": (90, 175, 60),
    "blue": (60, 120, 220),
    "purple": (140, 80, 190),
    "pink": (240, 150, 190),
    "brown": (135, 85, 45),
    "white": (240, 240, 240),
    "gray": (150, 150, 150),
    "black": (40, 40, 40),
    "cream": (235, 200, 155),
}
_COLOUR_RGB = np.array(list(COLOUR_NAMES.values()), np.float64)
_COLOUR_SQUARED = (_COLOUR_RGB ** 2).sum(-1)


def nearest_colour_names(rgb: np.ndarray) -> np.ndarray:
    """[..., 3] RGB -> [...] index into COLOUR_NAMES of the nearest named colour.

    |x - c|^2 less the |x|^2 every colour shares, as one matrix product: 6x faster than the per-pixel differences
    (a reduction over an axis of 3), and as exact, since integer RGB keeps every term an integer far below 2^53, so
    ties break as before (the first colour)."""
    return np.argmin(_COLOUR_SQUARED - 2.0 * (rgb.astype(np.float64) @ _COLOUR_RGB.T), axis=-1)


def colour_words(image: Image.Image, max_words: int = 2, min_share: float = 0.25, alpha_threshold: int = 127) -> list[str]:
    """The names of an RGBA image's dominant colours over its opaque pixels: the most common always, the next
    ones while each covers at least `min_share` of them ("green", "brown" for a cactus in its pot)."""
    arr = np.asarray(image.convert("RGBA"))
    names = nearest_colour_names(arr[arr[:, :, 3] > alpha_threshold][:, :3])
    if names.size == 0:
        raise ValueError("no opaque pixels to describe")
    counts = np.bincount(names, minlength=len(COLOUR_NAMES)) / names.size
    order = np.argsort(-counts, kind="stable")
    words = list(COLOUR_NAMES)
    return [words[order[0]]] + [words[i] for i in order[1:max_words] if counts[i] >= min_share]


@dataclass(frozen=True)
class SceneObject:
    name: str  # the emoji's phrase, as it appears in the caption (its name, or its colours and name)
    emoji: str  # emoji file name
    box: tuple[int, int, int, int]  # visible-mask bbox, x1/y1 exclusive
    paste: tuple[int, int, int]  # x, y, side of the pasted (square) emoji
    visible: float = 1.0  # share of the emoji's mask pixels not covered by emoji pasted later


@dataclass
class Scene:
    image: Image.Image  # RGB
    caption: str
    objects: list[SceneObject]  # caption order (left to right)
    masks: np.ndarray  # bool [n, H, W], visible pixels of each object
    background: str


def load_emoji_names(emoji_dir: str | Path) -> dict[str, str]:
    return json.loads((Path(emoji_dir) / "names.json").read_text())


def _emoji_path(emoji_dir: Path, file: str) -> Path:
    return emoji_dir / "images" / file if (emoji_dir / "images" / file).exists() else emoji_dir / file


def article(name: str) -> str:
    return "an" if name[0] in "aeiou" else "a"


def _background(rng: random.Random, size: int) -> tuple[Image.Image, str]:
    names = sorted(PLAIN)
    c1 = rng.choice(names)
    if rng.random() < 0.5:
        return Image.new("RGB", (size, size), PLAIN[c1]), f"{article(c1)} {c1} background"
    c2 = rng.choice([n for n in names if n != c1])
    t = np.linspace(0.0, 1.0, size)[:, None, None]
    grad = (1 - t) * np.array(PLAIN[c1]) + t * np.array(PLAIN[c2])
    arr = np.broadcast_to(np.rint(grad), (size, size, 3)).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(arr), "RGB"), f"{article(c1)} {c1} to {c2} gradient background"


def rotate_hue(image: Image.Image, shift: int) -> Image.Image:
    """An RGBA image with its hue rotated by `shift` of 256 steps (PIL's HSV scale); alpha is kept."""
    h, sat, val = image.convert("RGB").convert("HSV").split()
    h = h.point(lambda v: (v + shift) % 256)
    out = Image.merge("HSV", (h, sat, val)).convert("RGB").convert("RGBA")
    out.putalpha(image.getchannel("A"))
    return out


def _overlaps(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[2] and b[1] < a[1] + a[2]


def render_scene(
    emoji_dir: str | Path,
    seed: int,
    *,
    size: int = 256,
    n_objects: int | None = None,
    names: dict[str, str] | None = None,
    overlap: bool = False,
    alpha_threshold: int = 127,
    scale: tuple[float, float] = (0.3, 0.5),
    shrink_with_count: bool = False,
    recolour: float = 0.0,
    describe_colours: bool = False,
) -> Scene:
    """One scene, fully determined by (emoji set, seed, options). `shrink_with_count` divides the emoji side
    by sqrt(number of emoji), so a scene of three holds about the object area of a scene of one. `recolour`
    is the chance that each emoji is drawn with its hue rotated (by 60-300 degrees): its name then no longer
    tells its colours, only its picture does (the draws come from their own RNG, so placements do not move).
    `describe_colours` names each emoji with the colours it is drawn in ("a green and brown cactus"): the caption
    then says what a recoloured emoji looks like, as a real caption would."""
    emoji_dir = Path(emoji_dir)
    names = names or load_emoji_names(emoji_dir)
    rng = random.Random(seed)
    n = n_objects or rng.randint(1, 3)
    files = rng.sample(sorted(names), n)
    canvas, bg_text = _background(rng, size)
    if shrink_with_count:
        scale = (scale[0] / n**0.5, scale[1] / n**0.5)
    hue_rng = random.Random(f"recolour-{seed}")
    hues = [hue_rng.randint(43, 213) if hue_rng.random() < recolour else 0 for _ in files]
    for _attempt in range(200):
        pastes = []
        for _ in files:
            side = rng.randint(int(size * scale[0]), int(size * scale[1]))
            for _try in range(100):
                p = (rng.randint(0, size - side), rng.randint(0, size - side), side)
                if overlap or not any(_overlaps(p, q) for q in pastes):
                    break
            pastes.append(p)
        if not overlap and any(_overlaps(a, b) for i, a in enumerate(pastes) for b in pastes[i + 1 :]):
            continue
        layers, masks, phrases = [], [], []
        for file, (x, y, side), hue in zip(files, pastes, hues):
            em = Image.open(_emoji_path(emoji_dir, file)).convert("RGBA").resize((side, side), Image.Resampling.LANCZOS)
            em = rotate_hue(em, hue) if hue else em
            phrases.append(f"{' and '.join(colour_words(em))} {names[file]}" if describe_colours else names[file])
            layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
            layer.paste(em, (x, y))
            layers.append(layer)
            masks.append(np.asarray(layer)[:, :, 3] > alpha_threshold)
        full = np.stack(masks)
        visible = full.copy()
        for i in range(n):  # later pastes cover earlier ones
            for j in range(i + 1, n):
                visible[i] &= ~full[j]
        if all(v.sum() >= 0.5 * f.sum() and f.any() for v, f in zip(visible, full)):
            break
    else:
        raise RuntimeError(f"could not place {n} emoji on a {size}px canvas (seed {seed})")
    image = canvas.convert("RGBA")
    for layer in layers:
        image = Image.alpha_composite(image, layer)
    objects = []
    for file, phrase, paste, vis, f in zip(files, phrases, pastes, visible, full):
        ys, xs = np.nonzero(vis)
        box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
        share = round(float(vis.sum() / f.sum()), 4)
        objects.append(SceneObject(name=phrase, emoji=file, box=box, paste=paste, visible=share))
    order = sorted(range(n), key=lambda i: (objects[i].box[0], objects[i].box[1]))
    objects = [objects[i] for i in order]
    visible = visible[order]
    phrases = [f"{article(o.name)} {o.name}" for o in objects]
    listed = phrases[0] if n == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return Scene(image.convert("RGB"), f"{listed} on {bg_text}", objects, visible, bg_text)


def mask_to_rle(mask: np.ndarray) -> dict:
    """Row-major run lengths of a bool mask, starting with a run of False (possibly 0)."""
    flat = mask.reshape(-1).astype(np.uint8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": [int(c) for c in counts]}


def rle_to_mask(rle: dict) -> np.ndarray:
    h, w = rle["size"]
    values = np.arange(len(rle["counts"])) % 2 == 1
    return np.repeat(values, rle["counts"]).reshape(h, w)


def render_set(emoji_dir: str | Path, out: str | Path, n: int, seed: int, size: int, uncaptioned: int,
               subjects: int | None = None, max_objects: int = 3, scale: tuple[float, float] = (0.3, 0.5),
               shrink_with_count: bool = False) -> None:
    """Write `n` scenes as scene_XXX.png + captions.jsonl and annotations.jsonl for all but the last
    `uncaptioned`: those are raw inputs, captioned by the VLM and searched by the detector and segmenter."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    captions, annotations = [], []
    names = load_emoji_names(emoji_dir)
    names = {f: names[f] for f in sorted(names)[:subjects]}  # the first `subjects` emoji (all by default)
    for i in range(n):
        n_objects = None if max_objects == 3 else random.Random(seed * 100_003 + i).randint(1, max_objects)
        scene = render_scene(emoji_dir, seed * 100_003 + i, size=size, names=names, n_objects=n_objects, scale=scale,
                             shrink_with_count=shrink_with_count)
        file = f"scene_{i:03d}.png"
        scene.image.save(out / file, format="PNG", optimize=True)
        if i >= n - uncaptioned:
            continue
        captions.append({"image": file, "caption": scene.caption})
        annotations.append(
            {
                "image": file,
                "caption": scene.caption,
                "width": size,
                "height": size,
                "objects": [
                    {
                        "name": o.name,
                        "emoji": o.emoji,
                        "box": list(o.box),
                        "paste": list(o.paste),
                        "visible": o.visible,
                        "mask": mask_to_rle(m),
                    }
                    for o, m in zip(scene.objects, scene.masks)
                ],
            }
        )
    for name, rows in (("captions.jsonl", captions), ("annotations.jsonl", annotations)):
        (out / name).write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def main(argv: list[str] | None = None) -> None:
    default_emoji = Path(__file__).resolve().parent.parent / "samples" / "emoji"
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--emoji", default=str(default_emoji), help="folder with names.json and the emoji images")
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--uncaptioned", type=int, default=3, help="scenes left out of captions.jsonl and annotations.jsonl")
    ap.add_argument("--subjects", type=int, default=None, help="draw from the first N emoji only (default: all)")
    ap.add_argument("--max-objects", type=int, default=3, choices=(1, 2, 3), help="emoji per scene: 1 to this")
    ap.add_argument("--scale", type=float, nargs=2, default=(0.3, 0.5), help="emoji side as a share of the scene's")
    ap.add_argument("--shrink-with-count", action="store_true", help="divide the emoji side by sqrt(emoji in the scene)")
    a = ap.parse_args(argv)
    render_set(a.emoji, a.out, a.n, a.seed, a.size, a.uncaptioned, a.subjects, a.max_objects, tuple(a.scale),
               a.shrink_with_count)


if __name__ == "__main__":
    main()
