"""SDXL micro-conditioning at sampling time: which *original size* the UNet is told.

SDXL's UNet takes add_time_ids = (original_h, original_w, crop_top, crop_left, target_h, target_w).
Training (models/mumu_model.py `prepare`) passes each example's own size before it was resized to the
decoder's resolution, so the model learns "an image that was originally this large". At inference SDXL
uses original_size = target_size = (1024, 1024) — which is what its training data (≥ 1024 px) looked like.
Ours must match what *our* training saw instead: the tiny samples are 256 px images trained at 64 px, and
telling the model "originally 64 px" asks for a kind of image it never saw.

So the sampler's original size is, in order:
1. `eval.sampler.original_size` when set (a square side);
2. the size the model was trained on most often, which training records in its model folder
   (`training_sizes.json`, written by mumu/train/loop.py; `mumu.generate.load_model` reads it);
3. the target size, SDXL's own convention, for a model saved without that record.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from mumu.errors import UserError
from mumu.io import write_json_atomic

SIZES_FILE = "training_sizes.json"


class SizeTally:
    """Counts the original (height, width) of the training examples one process has seen."""

    def __init__(self, counts: dict[str, int] | None = None):
        self.counts: Counter = Counter(counts or {})

    def add(self, sizes: Iterable[tuple[int, int]]) -> None:
        self.counts.update(f"{h}x{w}" for h, w in sizes)

    def most_common(self) -> tuple[int, int] | None:
        """The most frequent size (ties: the larger area, then the first in text order), None if empty.
        The mode, not a mean: micro-conditioning is learned for the sizes that were actually seen."""
        if not self.counts:
            return None
        best = max(sorted(self.counts), key=lambda k: (self.counts[k], _area(k)))
        h, w = best.split("x")
        return int(h), int(w)

    def to_json(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


def _area(key: str) -> int:
    h, w = key.split("x")
    return int(h) * int(w)


def write_sizes(model_dir: str | Path, tally: SizeTally) -> None:
    """The record beside a saved model (atomic); nothing when no example was seen."""
    size = tally.most_common()
    if size is not None:
        write_json_atomic(Path(model_dir) / SIZES_FILE, {"original_size": list(size), "counts": tally.to_json()})


def read_original_size(model_dir: str | Path) -> tuple[int, int] | None:
    """The training original size recorded in a model folder, None for a model saved without one."""
    path = Path(model_dir) / SIZES_FILE
    if not path.is_file():
        return None
    try:
        h, w = json.loads(path.read_text())["original_size"]
        size = int(h), int(w)
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path}: not a training size record ({type(exc).__name__}: {exc})") from None
    if min(size) < 1:
        raise UserError(f"{path}: original_size {list(size)} is not a size")
    return size


def sampling_original_size(configured: int | None, trained: tuple[int, int] | None,
                           target: tuple[int, int]) -> tuple[int, int]:
    """(h, w) to condition on: the configured side, else the trained size, else the target (see above)."""
    if configured is not None:
        return configured, configured
    return trained if trained is not None else target
