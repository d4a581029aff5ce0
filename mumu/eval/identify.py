"""Subject identification: is the subject of a generated image the one its prompt referenced?

DINO and CLIP-I need pretrained encoders; on the tiny profile (and anywhere offline without checkpoints)
the evaluation encoders carry random weights and their scores mean nothing. This score needs no weights:
each image is described by weight-free statistics of its foreground (the pixels that differ from the
background colour, read off the image border) — a colour histogram and a coarse silhouette — and each
generated image is matched against *every* subject of the benchmark. It is right when the subjects it
resembles most are the ones its prompt named, so it is read against its chance level, which the report
prints beside it: 1/S for one subject among S, k/S for k subjects.

It suits subjects told apart by colour and rough shape (the bundled emoji); it is no substitute for
DINO / CLIP-I on photographs, which stay for real checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

SIZE = 64  # images are compared at this size
BINS = 4  # colour histogram bins per channel (64 colours)
SHAPE = 8  # silhouette grid (of the foreground's bounding box)
BACKGROUND_DISTANCE = 48  # RGB distance (0..441) from the background colour that makes a pixel foreground
SHAPE_WEIGHT = 0.5  # silhouette agreement counts half as much as colour


def border_colour(rgb: np.ndarray, width: int = 3) -> np.ndarray:
    """The median colour of an [H, W, 3] image's `width`-pixel border: its background, for a centred subject."""
    b = width
    border = np.concatenate([rgb[:b].reshape(-1, 3), rgb[-b:].reshape(-1, 3),
                             rgb[b:-b, :b].reshape(-1, 3), rgb[b:-b, -b:].reshape(-1, 3)])
    return np.median(border.astype(np.float64), axis=0)


def colour_histogram(pixels: np.ndarray) -> np.ndarray:
    """[N, 3] pixels (0..255) → normalised BINS³ joint colour histogram (zeros when N == 0)."""
    q = np.clip((np.asarray(pixels, np.float64) * BINS / 256).astype(np.int64), 0, BINS - 1)
    h = np.bincount((q[:, 0] * BINS + q[:, 1]) * BINS + q[:, 2], minlength=BINS**3).astype(np.float64)
    return h / h.sum() if h.sum() else h


def _foreground(image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """(RGB float array, bool mask) at SIZE; transparent pixels are background, else the border's median."""
    rgba = np.asarray(image.convert("RGBA").resize((SIZE, SIZE), Image.Resampling.BILINEAR), np.float32)
    rgb, alpha = rgba[..., :3], rgba[..., 3]
    if (alpha < 128).any():
        return rgb, alpha >= 128
    return rgb, np.linalg.norm(rgb - border_colour(rgb), axis=-1) > BACKGROUND_DISTANCE


def describe(image: Image.Image) -> np.ndarray:
    """Feature vector: normalised foreground colour histogram (BINS³), then the SHAPE² silhouette of the
    foreground's bounding box. All zeros when nothing stands out from the background."""
    rgb, mask = _foreground(image)
    hist = np.zeros(BINS**3)
    shape = np.zeros(SHAPE * SHAPE)
    if mask.sum() >= 4:
        hist = colour_histogram(rgb[mask])
        ys, xs = np.nonzero(mask)
        box = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.float32)
        shape = np.asarray(Image.fromarray(box * 255).resize((SHAPE, SHAPE), Image.Resampling.BOX), np.float32).ravel() / 255
    return np.concatenate([hist, shape])


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, M]: colour histogram intersection + SHAPE_WEIGHT x silhouette agreement (1 - mean |difference|)."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    h = BINS**3
    colour = np.minimum(a[:, None, :h], b[None, :, :h]).sum(-1)
    shape = 1.0 - np.abs(a[:, None, h:] - b[None, :, h:]).mean(-1)
    return colour + SHAPE_WEIGHT * shape


def subject_features(subject_images: Sequence[Sequence[Image.Image]]) -> np.ndarray:
    """[S, D]: per subject, the mean description of its images."""
    return np.stack([np.mean([describe(im) for im in images], axis=0) for images in subject_images])


def identify(generated: np.ndarray, subjects: np.ndarray, referenced: Sequence[int]) -> float:
    """Share of the referenced subjects among the len(referenced) subjects the generated image resembles
    most (1 subject: 1 if it is the nearest, else 0)."""
    k = len(referenced)
    if not np.any(generated):  # nothing stands out from the background: no subject to identify
        return 0.0
    sims = similarity(generated, subjects)[0]
    top = np.argsort(-sims, kind="stable")[:k]
    return len(set(top.tolist()) & set(referenced)) / k


def chance(n_referenced: int, n_subjects: int) -> float:
    """Expected identify() of an image unrelated to its prompt: k of S subjects drawn at random."""
    return n_referenced / n_subjects
