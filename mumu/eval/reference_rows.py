"""Rows the report prints beside each run so its numbers can be read: the real-image ceiling and the copy row.

A DINO of 0.6 means little alone. Two rows computed from real images only give it a scale:

- **ceiling** ("real images"): the subject's *other* real images scored as if they were the outputs — what a
  perfect subject-driven generator, drawing a new image of the subject, would get. DINO / CLIP-I of each other
  image against the item's references (never against itself), averaged per subject, then over the item's
  subjects; the copy-paste score of each other image leaves it out of the "other images" it is compared with.
  CLIP-T: n/a (a real photo was not made for the prompt). Other images: the subject's other photos, or the toy
  benchmark's held-out renderings (mumu/eval/copying.py); a subject with one image and no renderings: n/a.
- **copy**: the prompt's own reference image scored as if it were the output — what pasting the input scores
  (multi-subject: each given image in turn, averaged). A run near this row on DINO / CLIP-I and on the
  copy-paste score is copying, not generating.

Each row has per-item values (for the same bootstrap intervals as the runs, mumu/eval/bootstrap.py) and means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mumu.config.eval import BootstrapConfig
from mumu.eval import bootstrap, copying, metrics
from mumu.eval.items import BenchItem

ROW_METRICS = ("dino", "clip_i", "clip_t", "copy_paste")


@dataclass
class RealFeatures:
    """DINO and CLIP features of every real image the scoring uses, by path."""

    paths: list[str]
    dino: np.ndarray
    clip: np.ndarray

    def __post_init__(self) -> None:
        self._index = {p: i for i, p in enumerate(self.paths)}

    def rows(self, paths: list[str]) -> list[int]:
        return [self._index[p] for p in paths]


def item_copy_paste(generated_dino: np.ndarray, given: list[str], others: list[list[str]],
                    real: RealFeatures) -> np.ndarray | None:
    """[N] copy-paste score of an item's images (DINO features) over the subjects that have other real images;
    None when none has."""
    usable = [(g, o) for g, o in zip(given, others) if o]
    if not usable:
        return None
    return copying.copy_paste_score(generated_dino, [real.dino[real.rows([g])] for g, _ in usable],
                                    [real.dino[real.rows(o)] for _, o in usable])


def _mean_or_none(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def ceiling_item(item: BenchItem, others: list[list[str]], real: RealFeatures) -> dict[str, float | None]:
    """The item's subjects' other real images scored as outputs (see the module docstring)."""

    def cos(image: str, against: list[str], feats: np.ndarray) -> float:
        return float(metrics.cosine_matrix(feats[real.rows([image])], feats[real.rows(against)]).mean())

    per_subject: dict[str, list[float]] = {"dino": [], "clip_i": [], "copy_paste": []}
    for given, refs, rest in zip(item.given_images(), item.references, others):
        dino, clip_i, copy_paste = [], [], []
        for image in rest:
            against = [r for r in refs if r != image]  # an image is never its own reference
            if against:
                dino.append(cos(image, against, real.dino))
                clip_i.append(cos(image, against, real.clip))
            left_out = [r for r in rest if r != image]  # leave-one-out: the image is not among its "others"
            if left_out:
                copy_paste.append(cos(image, [given], real.dino) - cos(image, left_out, real.dino))
        for key, values in (("dino", dino), ("clip_i", clip_i), ("copy_paste", copy_paste)):
            if values:
                per_subject[key].append(float(np.mean(values)))
    return {**{k: _mean_or_none(v) for k, v in per_subject.items()}, "clip_t": None}


def copy_item(item: BenchItem, others: list[list[str]], real: RealFeatures,
              text_embed: np.ndarray) -> dict[str, float | None]:
    """The item's given reference images scored as its outputs (see the module docstring)."""
    given = item.given_images()
    outputs = real.rows(given)
    refs_dino = [real.dino[real.rows(r)] for r in item.references]
    refs_clip = [real.clip[real.rows(r)] for r in item.references]
    copy_paste = item_copy_paste(real.dino[outputs], given, others, real)
    return {
        "dino": float(metrics.subject_similarity(real.dino[outputs], refs_dino).mean()),
        "clip_i": float(metrics.subject_similarity(real.clip[outputs], refs_clip).mean()),
        "clip_t": float(metrics.clip_t(real.clip[outputs], np.repeat(text_embed[None], len(outputs), axis=0)).mean()),
        "copy_paste": None if copy_paste is None else float(copy_paste.mean()),
    }


def summarize(per_item: dict[str, dict[str, float | None]], cfg: BootstrapConfig) -> dict:
    """Means and bootstrap intervals of a row's per-item values ({item id: {metric: value}})."""
    row: dict = {"items": per_item, "ci": {}}
    for metric in ROW_METRICS:
        values = [v[metric] for v in per_item.values() if v[metric] is not None]
        row[metric] = _mean_or_none(values)
        row["ci"][metric] = bootstrap.mean_interval(values, cfg)
        row[f"n_{metric}"] = len(values)
    return row


def reference_rows(items: list[BenchItem], others: dict[str, list[list[str]]], real: RealFeatures,
                   text_embeds: dict[str, np.ndarray], cfg: BootstrapConfig) -> dict[str, dict]:
    """{"ceiling": row, "copy": row} of a benchmark; `others[item id]`: per subject its other real images,
    `text_embeds[text]`: the CLIP text embedding of an item's text."""
    return {
        "ceiling": summarize({it.id: ceiling_item(it, others[it.id], real) for it in items}, cfg),
        "copy": summarize({it.id: copy_item(it, others[it.id], real, text_embeds[it.text]) for it in items}, cfg),
    }
