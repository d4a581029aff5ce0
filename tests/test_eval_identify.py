"""Subject identification (mumu/eval/identify.py): the bundled emoji, pasted onto backgrounds the way a
generated image would show them, are identified among all subjects; blank or wrong images are not."""

import numpy as np
from PIL import Image

from mumu.eval import identify
from mumu.eval.benchmarks import emoji_subjects
from mumu.eval.items import load_rgb

SUBJECTS = emoji_subjects()[:16]
BACKGROUNDS = [(72, 118, 214), (96, 172, 96), (236, 160, 190), (150, 150, 150), (238, 206, 84)]


def _scene(files: list[str], background, size: int = 64, scale: float = 0.5) -> Image.Image:
    canvas = Image.new("RGBA", (size, size), (*background, 255))
    side = int(size * scale)
    for i, f in enumerate(files):
        em = Image.open(f).convert("RGBA").resize((side, side), Image.Resampling.LANCZOS)
        x = (size - side) // 2 if len(files) == 1 else i * (size - side)
        canvas.alpha_composite(em, (x, (size - side) // 2))
    return canvas.convert("RGB")


def test_pasted_subjects_are_identified_among_all():
    feats = identify.subject_features([[load_rgb(p) for p in s.images] for s in SUBJECTS])
    hits = []
    for j, s in enumerate(SUBJECTS):
        for bg in BACKGROUNDS:
            hits.append(identify.identify(identify.describe(_scene(s.images, bg)), feats, [j]))
    assert np.mean(hits) >= 0.8, np.mean(hits)  # chance is 1/16
    assert identify.chance(1, len(SUBJECTS)) == 1 / 16


def test_two_subjects_in_one_image():
    feats = identify.subject_features([[load_rgb(p) for p in s.images] for s in SUBJECTS])
    scores = [identify.identify(identify.describe(_scene(SUBJECTS[a].images + SUBJECTS[b].images, bg, scale=0.45)),
                                feats, [a, b])
              for a, b in [(0, 5), (2, 9), (3, 12), (7, 14)] for bg in BACKGROUNDS[:3]]
    assert np.mean(scores) >= 0.6, scores  # chance 2/16
    assert identify.chance(2, 16) == 0.125


def test_blank_and_mismatched_images_score_nothing():
    feats = identify.subject_features([[load_rgb(p) for p in s.images] for s in SUBJECTS])
    blank = Image.new("RGB", (64, 64), BACKGROUNDS[0])
    assert not identify.describe(blank).any()
    assert identify.identify(identify.describe(blank), feats, [0]) == 0.0
    # every subject's picture scored as if the prompt had named the next subject
    wrong = [identify.identify(identify.describe(_scene(s.images, BACKGROUNDS[1])), feats, [(j + 1) % len(SUBJECTS)])
             for j, s in enumerate(SUBJECTS)]
    assert np.mean(wrong) <= 0.15, wrong


def test_features_are_colour_and_silhouette():
    red = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    red.paste((230, 20, 20, 255), (8, 8, 24, 24))
    d = identify.describe(red)
    assert d.shape == (identify.BINS**3 + identify.SHAPE**2,)
    assert abs(d[:identify.BINS**3].sum() - 1) < 1e-9 and d[:identify.BINS**3].argmax() == (3 * identify.BINS) * identify.BINS
    assert d[identify.BINS**3:].min() > 0.99  # a filled square fills its own box
