"""One training sample read from a data shard: its tar members decoded with our own handlers (never pickle)
into the record, the target and the prompt images of one prompt form, plus its cached features when the
feature cache is read. Shared by the training loader (mumu/train/data.py) and the cache-features stage
(mumu/train/feature_stage.py), so the cache holds features of exactly the prompts training builds.
"""

from __future__ import annotations

import io
import json
import os
import re
from dataclasses import dataclass

import numpy as np
import webdataset as wds
from PIL import Image

from data_schemas.sample import SCHEMA_VERSION, ImageSegment, SampleRecord
from mumu.errors import UserError
from mumu.train.features import MEMBER as FEATURES_MEMBER
from mumu.train.features import decode_features


def _decode_image(data: bytes) -> Image.Image:
    # Only the formats the data stage writes: no exotic PIL decoders on shard bytes, and a fast "no".
    try:
        image = Image.open(io.BytesIO(data), formats=["PNG", "JPEG"])
    except Image.UnidentifiedImageError:
        raise ValueError("not a PNG or JPEG image") from None
    image.load()  # decode now, so a corrupt member fails here and not inside the trainer
    return image


# Our handlers only. webdataset's default post-handlers (basichandlers) unpickle .pyd/.pickle members and
# its pre-handler gunzips: both are switched off with pre=[] / post=[]; other members stay raw bytes.
DECODER = wds.Decoder(
    [wds.handle_extension("png jpg jpeg", _decode_image), wds.handle_extension("json", json.loads)],
    pre=[],
    post=[],
)

_IMAGE_MEMBER = re.compile(r"\.(png|jpe?g)$", re.IGNORECASE)


def member_selector(prompt_mode: str):
    """Which tar members to read at all (others are skipped unread, e.g. a .pyd)."""

    def select(fname: str) -> bool:
        suffix = os.path.basename(fname).partition(".")[2].lower()
        if suffix == "json":
            return True
        if not _IMAGE_MEMBER.search(suffix):
            return False
        # The data stage names crops crop_<i>.png and segments segment_<i>.png; each mode needs one kind.
        skip = {"text": ("crop_", "segment_", "mask_"), "mumu": ("segment_",), "unimo": ("crop_",)}[prompt_mode]
        return not suffix.startswith(skip)

    return select


class BadSample(Exception):
    pass


@dataclass
class Decoded:
    key: str
    caption: str
    text_only: bool
    image: Image.Image
    segments: list[str | tuple[Image.Image, np.ndarray, str]]  # text, or (prompt image, entity mask, its member)
    features: dict | None = None  # the sample's cached tensors by name (mumu/train/feature_stage.py)


def decode_sample(raw: dict, prompt_mode: str, cache_key: str | None = None) -> Decoded:
    def member(name: str):
        name = name.lower()
        if name not in raw:
            raise BadSample(f"missing member {name}")
        try:
            return DECODER.decode({name: raw[name]})[name]
        except wds.DecodingError as exn:
            cause = exn.__cause__ or exn
            raise BadSample(f"{name}: {type(cause).__name__}: {cause}") from None

    try:
        record = SampleRecord.model_validate(member("json"))
    except ValueError as exn:  # pydantic's ValidationError is a ValueError
        raise BadSample(f"json: {str(exn).splitlines()[0]}") from None
    if record.schema_version != SCHEMA_VERSION:
        raise BadSample(f"schema_version {record.schema_version}, this loader reads {SCHEMA_VERSION}")
    target = member(record.image).convert("RGB")
    segments: list[str | tuple[Image.Image, np.ndarray]] = [record.caption]
    if prompt_mode != "text" and not record.text_only:
        segments = []
        for seg in record.prompt_mumu if prompt_mode == "mumu" else record.prompt_unimo:
            if not isinstance(seg, ImageSegment):
                segments.append(seg.text)
                continue
            if not 0 <= seg.entity < len(record.entities):
                raise BadSample(f"image segment {seg.ref} names entity {seg.entity} of {len(record.entities)}")
            mask = np.asarray(member(record.entities[seg.entity].mask).convert("L")) > 127
            if mask.shape != (target.height, target.width):
                raise BadSample(f"mask {mask.shape[::-1]} is not the target's size {target.size}")
            segments.append((member(seg.ref).convert("RGB"), mask, seg.ref))
    features = None
    if cache_key is not None:
        where = f"{os.path.basename(str(raw.get('__url__')))}#{record.key}"
        features = decode_features(raw[FEATURES_MEMBER], cache_key, where) if FEATURES_MEMBER in raw else None
        if features is None:
            raise UserError(f"{where}: no cached features for this sample: the feature cache does not match its "
                            f"data shard; run cache-features again")
    return Decoded(record.key, record.caption, record.text_only, target, segments, features)
