"""The values passed between data stages: planned inputs, per-item state, and a shard's work.

Stages never mutate what they receive (a retried task must see the same input): each returns a new
`ShardWork` with new `Item`s built by `dataclasses.replace`. Images and arrays are shared read-only.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image

from data_schemas import QuarantineRecord, SampleRecord


@dataclass(frozen=True)
class GivenObject:
    """A ground-truth object of an input (annotations.jsonl): its name, box and mask at the annotation's size."""

    name: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive) at `size`
    mask_counts: tuple[int, ...]  # row-major run lengths starting with a run of False (mumu.data.scenes RLE)
    size: tuple[int, int]  # (height, width) the box and mask refer to


@dataclass(frozen=True)
class InputRef:
    """One planned input. `error` set = known bad at planning time (e.g. a captions.jsonl row whose
    file is missing): it still counts as an input of its shard and is quarantined by `ingest`."""

    source: str  # stable display name: path relative to the input root, or "<tar>#<member>"
    path: str = ""  # absolute file (folder input) or tar path
    member: str | None = None  # image member inside `path` when it is a tar
    caption: str | None = None  # given caption (captions.jsonl)
    caption_member: str | None = None  # tar member with the caption (.txt, or .json with "caption")
    error: str | None = None
    given: tuple[GivenObject, ...] | None = None  # annotated objects (annotations.jsonl): skip detect + segment

    @property
    def key(self) -> str:
        return sample_key(self.source)


def sample_key(source: str) -> str:
    """Webdataset key of a sample: a hash of its source, so it is stable when other inputs come and go
    and has no dots or slashes (webdataset splits member names at the first dot of the basename)."""
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class InputShard:
    index: int
    refs: tuple[InputRef, ...]

    @property
    def name(self) -> str:
        return shard_name(self.index)

    @property
    def plan_sha256(self) -> str:
        """Fingerprint of the planned inputs: changes when an input is added, removed or renamed."""
        return hashlib.sha256("\n".join(r.source for r in self.refs).encode("utf-8")).hexdigest()


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.tar"


@dataclass(frozen=True)
class Entity:
    phrase: str  # as written in the caption (caption[span[0]:span[1]] == phrase)
    span: tuple[int, int]
    box: tuple[int, int, int, int] | None = None  # integer pixel box, x1/y1 exclusive
    score: float = 0.0


@dataclass(frozen=True)
class Composed:
    """A finished sample: its JSON record and the images of its members (encoded by `write`)."""

    record: SampleRecord
    images: dict[str, Image.Image]  # member name ("image.png", "crop_0.png", ...) → image
    # Members whose bytes already exist (the target image as its input PNG, mumu.data.decode.png_as_is): `write`
    # stores these instead of encoding the image of the same name.
    encoded: dict[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Item:
    key: str
    source: str
    image: Image.Image
    caption: str | None
    image_png: bytes | None = None  # the input's own PNG bytes of exactly `image` (mumu.data.decode.Decoded.png)
    caption_source: Literal["given", "vlm"] = "given"
    entities: tuple[Entity, ...] = ()
    masks: np.ndarray | None = None  # bool [n_entities, H, W], set by `segment`
    composed: Composed | None = None
    given: tuple[GivenObject, ...] | None = None  # ground truth of an annotated input (InputRef.given)

    def replace(self, **changes) -> "Item":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ShardWork:
    shard: int
    inputs: int  # planned inputs of this shard: written + quarantined must equal it at the end
    items: tuple[Item, ...]
    quarantined: tuple[QuarantineRecord, ...] = ()
    counts: dict[str, int] = field(default_factory=dict)
    plan_sha256: str = ""  # InputShard.plan_sha256, recorded in the shard report

    @property
    def name(self) -> str:
        return shard_name(self.shard)

    def next(
        self,
        items: list[Item],
        quarantined: list[QuarantineRecord] = (),
        counts: dict[str, int] | None = None,
    ) -> "ShardWork":
        """The work after a stage: surviving items, quarantine appended, counters added."""
        merged = dict(self.counts)
        for k, v in (counts or {}).items():
            merged[k] = merged.get(k, 0) + v
        return ShardWork(
            self.shard, self.inputs, tuple(items), self.quarantined + tuple(quarantined), merged, self.plan_sha256
        )

    def reject(self, source: str, stage: str, reason: str) -> QuarantineRecord:
        return QuarantineRecord(source=source, stage=stage, reason=reason, shard=self.shard)
