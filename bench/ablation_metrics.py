"""Offline, weight-free scores of the toy ablation: colour-histogram subject fidelity and background adherence.

Why not DINO / CLIP-I: offline, the evaluation encoders are the tiny ones with *random* weights
(models/eval_encoders.py), whose similarities say nothing about the subject; no pretrained encoder is
reachable. Emoji subjects are mostly identified by their colours (a yellow banana, a pink pig, a green
cactus), so a colour histogram is a meaningful, deterministic proxy at 64 px:

- background: the median colour of the generated image's 3-px border; `adherence` = 1 when its nearest
  palette colour (mumu.data.scenes.PLAIN) is the colour the prompt names;
- foreground: the pixels farther than FG_DISTANCE (RGB Euclidean) from that background colour;
- `fidelity` = histogram intersection (4 bins per channel, 64 bins, sums to 1) between the foreground and the
  referenced subject's opaque pixels (alpha > 127). 0 when nothing was drawn (< MIN_FG pixels);
- `margin` = fidelity to the referenced subject minus the mean fidelity to every *other* subject: general
  "emoji-like colours" score the same against all subjects and cancel; only subject-specific colours count.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from mumu.data.scenes import PLAIN, _emoji_path
from mumu.eval import identify

BINS = identify.BINS
BORDER = 3
FG_DISTANCE = 48.0
MIN_FG = 16


colour_hist = identify.colour_histogram  # the evaluation's own histogram (BINS per channel there too)


def intersection(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.minimum(a, b).sum())


def subject_hist(emoji_dir: Path, file: str) -> np.ndarray:
    rgba = np.asarray(Image.open(_emoji_path(emoji_dir, file)).convert("RGBA"))
    return colour_hist(rgba[..., :3][rgba[..., 3] > 127])


def background_colour(image: Image.Image) -> np.ndarray:
    return identify.border_colour(np.asarray(image.convert("RGB")), BORDER)


def nearest_palette(colour: np.ndarray) -> str:
    names = sorted(PLAIN)
    d = [np.linalg.norm(colour - np.array(PLAIN[n], np.float64)) for n in names]
    return names[int(np.argmin(d))]


def foreground(image: Image.Image) -> np.ndarray:
    arr = np.asarray(image.convert("RGB"))
    dist = np.linalg.norm(arr.astype(np.float64) - background_colour(image), axis=-1)
    return arr[dist > FG_DISTANCE]


def score_image(image: Image.Image, colour: str, ref: np.ndarray, others: list[np.ndarray]) -> dict[str, float]:
    """All scores of one generated image whose prompt named subject histogram `ref` and background `colour`."""
    fg = foreground(image)
    if len(fg) < MIN_FG:
        fid, other = 0.0, 0.0
    else:
        h = colour_hist(fg)
        fid = intersection(h, ref)
        other = float(np.mean([intersection(h, o) for o in others]))
    return {"fidelity": fid, "margin": fid - other, "adherence": float(nearest_palette(background_colour(image)) == colour),
            "foreground_share": len(fg) / (image.width * image.height)}


def reference_render(emoji_dir: Path, file: str, colour: str, size: int = 64, scale: float = 0.45) -> Image.Image:
    """The prompt drawn exactly (subject pasted at the centre of the named background): the metric's ceiling."""
    side = round(size * scale)
    em = Image.open(_emoji_path(emoji_dir, file)).convert("RGBA").resize((side, side), Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", (size, size), PLAIN[colour] + (255,))
    canvas.alpha_composite(em, ((size - side) // 2, (size - side) // 2))
    return canvas.convert("RGB")
