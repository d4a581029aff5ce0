"""Build a sample from an image, its caption, entity spans, boxes and masks.

Per entity (in caption order): crop = the box region of the image, pixel for pixel; segment = the
crop with pixels outside the mask set to white; mask = full-image "L" image, 0/255.
MUMU's crop rules decide which entities appear as images in the prompt: drop a crop whose shorter
side is < `min_crop_side`, whose area is < `min_crop_area` or whose box covers more than
`max_crop_fraction` of the image; with `image_share` < 1 (UNIMO-G's random substitution) keep each
remaining one with that probability; then keep the first `max_images_per_prompt`. Two prompts are
built from the same kept entities:
- MUMU: the crop is inserted *before* its entity's words ("a <crop> cactus and a <crop> hot dog");
- UNIMO-G: the masked segment *replaces* its entity's words ("a <segment> and a <segment>").
Every sample keeps both prompts and its caption: which one a training step uses, including the share of
caption-only steps (`train.<stage>.text_only_share`), is decided by the training loader.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter

import numpy as np
from PIL import Image

from data_schemas import EntityRecord, ImageSegment, SampleRecord, TextSegment
from mumu.config.data import ComposeConfig
from mumu.data.work import Composed, Entity

WHITE = (255, 255, 255)


def int_box(box, width: int, height: int) -> tuple[int, int, int, int] | None:
    """Float box → integer pixel box covering it (floor/ceil), clipped; None when empty."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        return None
    b = (
        min(max(math.floor(x0), 0), width),
        min(max(math.floor(y0), 0), height),
        min(max(math.ceil(x1), 0), width),
        min(max(math.ceil(y1), 0), height),
    )
    return b if b[2] > b[0] and b[3] > b[1] else None


def seeded_uniform(seed: int, key: str) -> float:
    """A uniform number in [0, 1) from sha256(seed, key): the same for a key on every run and in any order."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big")
    return h / 2**64


def crop_rules(boxes: list[tuple[int, int, int, int]], width: int, height: int, cfg: ComposeConfig,
               key: str = "") -> list[str]:
    """Per box "kept" or the reason it is left out of the prompt ("small", "large", "unchosen", "limit").
    `key` (the sample's) seeds the draw of `image_share`."""
    out, kept = [], 0
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        area = (x1 - x0) * (y1 - y0)
        if min(x1 - x0, y1 - y0) < cfg.min_crop_side or area < cfg.min_crop_area:
            out.append("small")
        elif area > cfg.max_crop_fraction * width * height:
            out.append("large")
        elif cfg.image_share < 1.0 and seeded_uniform(cfg.seed, f"{key}:entity:{i}") >= cfg.image_share:
            out.append("unchosen")
        elif kept >= cfg.max_images_per_prompt:
            out.append("limit")
        else:
            out.append("kept")
            kept += 1
    return out


def masked_segment(image: Image.Image, box: tuple[int, int, int, int], mask: np.ndarray) -> Image.Image:
    """The box crop with every pixel outside `mask` (bool HxW, full image) set to white."""
    crop = np.asarray(image.crop(box)).copy()
    x0, y0, x1, y1 = box
    crop[~mask[y0:y1, x0:x1]] = WHITE
    return Image.fromarray(crop, mode="RGB")


def build_prompts(caption: str, entities: list[EntityRecord], refs: dict[int, tuple[str, str]]):
    """(prompt_mumu, prompt_unimo) for the entities in `refs` (entity index → (crop ref, segment ref))."""
    mumu: list = []
    unimo: list = []

    def text(seq: list, s: str) -> None:
        if not s:
            return
        if seq and isinstance(seq[-1], TextSegment):
            seq[-1] = TextSegment(text=seq[-1].text + s)
        else:
            seq.append(TextSegment(text=s))

    pos = 0
    for i in sorted(refs, key=lambda j: entities[j].char_span[0]):
        start, end = entities[i].char_span
        crop_ref, segment_ref = refs[i]
        text(mumu, caption[pos:start])
        mumu.append(ImageSegment(ref=crop_ref, entity=i))
        text(mumu, caption[start:end])
        text(unimo, caption[pos:start])
        unimo.append(ImageSegment(ref=segment_ref, entity=i))
        pos = end
    text(mumu, caption[pos:])
    text(unimo, caption[pos:])
    return mumu, unimo


def compose_sample(
    *,
    key: str,
    source: str,
    image: Image.Image,
    caption: str,
    image_png: bytes | None = None,
    caption_source: str,
    entities: list[Entity],
    masks: np.ndarray | None,
    cfg: ComposeConfig,
    image_ext: str = "png",
) -> tuple[Composed, Counter]:
    """One sample's record and member images. Entities must carry integer boxes; masks [n, H, W] bool.
    `image_png`: the PNG bytes of exactly `image`, stored as the target instead of encoding it again."""
    w, h = image.size
    counts: Counter = Counter()
    if entities and (masks is None or masks.shape != (len(entities), h, w)):
        got = None if masks is None else tuple(masks.shape)
        raise ValueError(f"masks shape {got} != ({len(entities)}, {h}, {w})")
    boxes = [e.box for e in entities]
    decisions = crop_rules(boxes, w, h, cfg, key)
    images: dict[str, Image.Image] = {f"image.{image_ext}": image}
    records: list[EntityRecord] = []
    refs: dict[int, tuple[str, str]] = {}
    for i, (ent, decision) in enumerate(zip(entities, decisions)):
        mask = masks[i].astype(bool)
        crop, seg, mask_name = f"crop_{i}.png", f"segment_{i}.png", f"mask_{i}.png"
        images[crop] = image.crop(ent.box)
        images[seg] = masked_segment(image, ent.box, mask)
        images[mask_name] = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
        records.append(
            EntityRecord(
                phrase=ent.phrase,
                char_span=ent.span,
                box=ent.box,
                score=round(float(ent.score), 6),
                crop=crop,
                segment=seg,
                mask=mask_name,
                in_prompt=decision == "kept",
            )
        )
        counts[f"crops_{decision}"] += 1
        if decision == "kept":
            refs[i] = (crop, seg)
    mumu, unimo = build_prompts(caption, records, refs)
    record = SampleRecord(
        key=key,
        source=source,
        image=f"image.{image_ext}",
        width=w,
        height=h,
        caption=caption,
        caption_source=caption_source,
        entities=records,
        prompt_mumu=mumu,
        prompt_unimo=unimo,
    )
    encoded = {f"image.{image_ext}": image_png} if image_png is not None and image_ext == "png" else {}
    return Composed(record=record, images=images, encoded=encoded), counts
