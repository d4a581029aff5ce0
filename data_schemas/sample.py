"""Pydantic models of a webdataset sample's JSON record, a quarantine row and the manifest."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextSegment(_Record):
    type: Literal["text"] = "text"
    text: str


class ImageSegment(_Record):
    type: Literal["image"] = "image"
    # Member of the same sample holding the image, e.g. "crop_0.png" (file `<key>.crop_0.png` in the tar).
    ref: str
    entity: int  # index into SampleRecord.entities


Segment = Annotated[TextSegment | ImageSegment, Field(discriminator="type")]


class EntityRecord(_Record):
    phrase: str
    char_span: tuple[int, int]  # [start, end) of the phrase in the caption
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in target-image pixels (x1, y1 exclusive)
    score: float  # detector confidence (1.0 for given ground-truth boxes)
    crop: str  # box crop of the target image, e.g. "crop_0.png"
    segment: str  # the masked segment: box crop with pixels outside the mask set to white, "segment_0.png"
    mask: str  # full-image binary mask (mode "L", 0/255), "mask_0.png"
    in_prompt: bool  # False when the crop rules dropped it (too small, too large, not drawn, over the limit)


class SampleRecord(_Record):
    schema_version: int = SCHEMA_VERSION
    key: str
    source: str  # input path (or tar#member) the sample came from
    image: str  # member holding the target image, "image.png" or "image.jpg"
    width: int
    height: int
    caption: str
    caption_source: Literal["given", "vlm"]
    entities: list[EntityRecord]
    # Always false in shards written now (the text-only share is drawn at training time). True only in shards
    # from before, which chose it at build time and whose prompts below are then the caption alone; the
    # training loader still trains those on the caption.
    text_only: bool = False
    # MUMU: each kept crop inserted *before* the words of its entity.
    prompt_mumu: list[Segment]
    # UNIMO-G: each kept masked segment *replaces* the words of its entity.
    prompt_unimo: list[Segment]


class QuarantineRecord(_Record):
    source: str
    stage: str  # ingest, caption, detect, ...
    reason: str
    shard: int


class ShardReport(_Record):
    """Per-shard counts; written next to the tar so a finished shard is known without opening it."""

    shard: int
    name: str  # e.g. "shard-00000.tar"
    inputs: int
    written: int
    quarantined: int
    sha256: str
    bytes: int
    counts: dict[str, int]  # per-stage counters (captioned_by_vlm, entities, boxes, masks, crops_kept, ...)
    # sha256 of the shard's planned input sources: a finished shard is reused only for the same inputs.
    plan_sha256: str = ""
    config_hash: str = ""  # of the DataConfig that wrote it: a shard from another config is rebuilt


class Manifest(_Record):
    schema_version: int = SCHEMA_VERSION
    config_hash: str
    versions: dict[str, str]
    inputs: int
    written: int
    quarantined: int
    counts: dict[str, int]
    shards: list[ShardReport]
