"""The copy-paste score: does a generated image reproduce the reference image it was given, or draw its subject?

DINO and CLIP-I reward resemblance to the reference image, so a model that pastes its input scores best on them
while doing no subject-driven generation at all. A model that draws *the subject* should resemble any real image
of that subject about as much as the one it was shown. So, for a generated image and one of its subjects::

    copy_paste = cos(output, the image given in the prompt) - mean cos(output, the subject's other real images)

averaged over the item's subjects (as UNIMO-G averages DINO over subjects), on DINO features in the report.
About 0 (or below): the output is as close to the subject's other images as to its input, what a new image of
the subject scores. High (towards 1 - the subject's own spread): the output is its input, pasted.

"Other real images": the subject's other photos where the benchmark has several (DreamBench: 4-6 a subject,
MultiBench: cake.jpeg, cake2.jpeg); the bundled toy benchmark has one image per emoji subject, so its subjects
get held-out renderings (mumu/eval/held_out.py): the emoji composed on a scene background at another scale and
position, as the toy training scenes show it. A subject with neither has no copy-paste score (n/a).

`copy_paste_score` is plain feature math, reused by other evaluations (e.g. unseen-subject tests).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mumu.eval import metrics


def copy_paste_score(generated, given: Sequence, others: Sequence) -> np.ndarray:
    """[N] copy-paste score of each generated image (rows of `generated`, [N, D] features).

    `given`: per subject, the features of the image its prompt gave ([D] or [1, D]); `others`: per subject, the
    features of its other real images ([R_s, D], R_s >= 1), none of them the given image. Several subjects: the
    mean over subjects of each subject's score."""
    if not given or len(given) != len(others):
        raise ValueError(f"need one given image and one set of other images per subject, got {len(given)} and "
                         f"{len(others)}")
    per_subject = []
    for reference, rest in zip(given, others):
        rest = metrics._f64(rest)
        if rest.shape[0] == 0:
            raise ValueError("a subject needs at least one other real image for a copy-paste score")
        to_given = metrics.cosine_matrix(generated, reference)[:, 0]
        to_others = metrics.cosine_matrix(generated, rest).mean(axis=1)
        per_subject.append(to_given - to_others)
    return np.mean(per_subject, axis=0)


def other_real_images(subject_images: list[str], given: str, held_out: list[str] | None = None) -> list[str]:
    """The real images a subject's outputs are compared with besides the one its prompt gave: its other images
    where it has several, else its held-out renderings (the toy benchmark), else none."""
    rest = [p for p in subject_images if Path(p) != Path(given)]
    return rest if rest else list(held_out or [])
