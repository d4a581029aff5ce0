"""Open-vocabulary box detection for the data stage: transformers' Grounding DINO, phrase-grounded.

`build_grounding_dino(source)` loads a published checkpoint with `from_pretrained`, or builds a tiny
Grounding DINO from a config dict (merged over `TINY_GROUNDING_DINO`) with a tiny BERT vocabulary.
`Detector.detect` turns each image's phrases into one prompt ("p1. p2. p3."), runs the model in
batches and attributes every query to phrases by the phrases' *token spans* (from the tokenizer's
offsets), so repeated or overlapping words cannot be confused the way decoded-label matching can.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from transformers import (BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection,
                          GroundingDinoImageProcessorPil, GroundingDinoProcessor)
from transformers.image_transforms import center_to_corners_format

from models.hf import build_seeded, default_words, empty_weights_config, merge_config, pretrained_kwargs, torch_dtype
from mumu.config import ModelSource
from mumu.config.data import DetectConfig

Box = tuple[float, float, float, float]

# Grounding DINO's text masks and loss hard-code the BERT ids of these tokens (transformers'
# `SPECIAL_TOKENS = [101, 102, 1012, 1029]`), so the tiny vocabulary must put them at the same ids.
BERT_FIXED_IDS = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]", 1012: ".", 1029: "?"}

TINY_GROUNDING_DINO: dict[str, Any] = {
    "image_size": 128,  # processor: shortest and longest edge (>= 128 px: the model's train mode needs it)
    "backbone": {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "window_size": 4},
    "text": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
    "d_model": 32,
    "encoder_layers": 1,
    "decoder_layers": 2,  # 1 breaks the model (see shared/README)
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 64,
    "decoder_ffn_dim": 64,
    "encoder_n_points": 2,
    "decoder_n_points": 2,
    "num_queries": 30,
    "max_text_len": 64,
}


def build_tiny_bert_tokenizer(words: list[str] | None = None):
    """A BERT WordPiece tokenizer over `words` with Grounding DINO's special ids where it expects them.

    Single characters and their "##" continuations are in the vocabulary, so an unknown word splits
    into pieces (a real token span) instead of collapsing to [UNK].
    """
    fixed_tokens = set(BERT_FIXED_IDS.values())
    chars = list(string.ascii_lowercase + string.digits)
    extra = chars + ["##" + c for c in chars] + list(",-'!:;()/&")
    extra += [w for w in sorted(set(words or default_words())) if w not in extra and w not in fixed_tokens]
    first = max(BERT_FIXED_IDS) + 1
    tokens = [BERT_FIXED_IDS.get(i, f"[unused{i}]") for i in range(first)] + extra
    # `vocab=` (not `vocab_file=`, which transformers 5.x silently ignores).
    return BertTokenizer(vocab={tok: i for i, tok in enumerate(tokens)})


def build_grounding_dino(source: ModelSource):
    """(GroundingDinoForObjectDetection, GroundingDinoProcessor) for a source."""
    if (bundled := empty_weights_config(source)) is not None:
        # The published image processing (800 / 1333 px edges are the processor's defaults); BERT's 30,522-word
        # vocabulary is not bundled: the tiny one stands in (its ids are a subset, special ids where BERT has them).
        config = GroundingDinoConfig.from_pretrained(bundled)
        processor = GroundingDinoProcessor(image_processor=GroundingDinoImageProcessorPil(),
                                           tokenizer=build_tiny_bert_tokenizer())
        # .to("meta"): its level embedding is made with the legacy torch.Tensor(...), which ignores the meta device.
        model = GroundingDinoForObjectDetection(config).to("meta", torch_dtype(source.dtype))
        return model.eval(), processor
    if source.is_pretrained:
        kwargs = pretrained_kwargs(source)
        processor = GroundingDinoProcessor.from_pretrained(source.location, **kwargs)
        model = GroundingDinoForObjectDetection.from_pretrained(
            source.location, dtype=torch_dtype(source.dtype), **kwargs
        )
        return model.eval(), processor
    cfg = merge_config(TINY_GROUNDING_DINO, source.config or {})
    tokenizer = build_tiny_bert_tokenizer()
    size = cfg["image_size"]
    # The Pil processor: torchvision (needed by the default fast one) does not run on this machine.
    image_processor = GroundingDinoImageProcessorPil(size={"shortest_edge": size, "longest_edge": size})
    processor = GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer)
    top = {k: v for k, v in cfg.items() if k not in {"image_size", "backbone", "text"}}
    config = GroundingDinoConfig(
        backbone_config={
            "model_type": "swin", "image_size": size, "out_features": ["stage2", "stage3", "stage4"],
            "out_indices": [2, 3, 4], **cfg["backbone"],
        },
        text_config={
            "model_type": "bert", "vocab_size": len(tokenizer),
            "max_position_embeddings": cfg["max_text_len"], **cfg["text"],
        },
        **top,
    )
    model = build_seeded(lambda: GroundingDinoForObjectDetection(config), source.seed)
    return model.to(torch_dtype(source.dtype)).eval(), processor


# --- box utilities ---------------------------------------------------------------------------------


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of xyxy boxes: [N, 4] x [M, 4] -> [N, M]."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union, torch.zeros_like(inter))


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, limit: int | None = None) -> torch.Tensor:
    """Greedy non-maximum suppression, same semantics as torchvision.ops.nms (a box is dropped when
    its IoU with a kept, higher-scoring box is > iou_threshold). Hand-written because torchvision does
    not run beside this torch build. Returns kept indices, highest score first; ties keep input order.
    """
    order = torch.argsort(scores, descending=True, stable=True)
    keep: list[int] = []
    while order.numel() and (limit is None or len(keep) < limit):
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        if rest.numel():
            rest = rest[box_iou(boxes[best : best + 1], boxes[rest])[0] <= iou_threshold]
        order = rest
    return torch.tensor(keep, dtype=torch.long)


# --- detector --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Detection:
    """A BoxDetection (mumu/data/contracts.py)."""

    phrase_index: int  # index into the image's phrase list
    box: Box  # x0, y0, x1, y1 in the image's pixel coordinates
    score: float  # max sigmoid over the phrase's tokens


def clean_phrase(phrase: str) -> str:
    """Lower-case, single-spaced, without "." / "?": those are Grounding DINO's phrase separators,
    so inside a phrase they would split it in two."""
    return " ".join(phrase.lower().replace(".", " ").replace("?", " ").split())


def build_prompt(phrases: list[str]) -> tuple[str, list[tuple[int, int] | None]]:
    """"p1. p2. p3." and each phrase's character span in it (None for a phrase that is empty)."""
    parts: list[str] = []
    spans: list[tuple[int, int] | None] = []
    pos = 0
    for phrase in phrases:
        text = clean_phrase(phrase)
        if not text:
            spans.append(None)
            continue
        if parts:
            pos += 1  # the space after the previous "."
        spans.append((pos, pos + len(text)))
        parts.append(text + ".")
        pos += len(text) + 1
    return " ".join(parts), spans


def phrase_token_masks(
    offsets: list[tuple[int, int]], spans: list[tuple[int, int] | None], length: int
) -> list[torch.Tensor | None]:
    """For each phrase, a bool mask over the first `length` token positions: tokens whose character
    offsets fall inside the phrase's span. None when the phrase is empty or was truncated away."""
    masks: list[torch.Tensor | None] = []
    for span in spans:
        if span is None:
            masks.append(None)
            continue
        lo, hi = span
        inside = [s < e and lo <= s and e <= hi for s, e in offsets[:length]]
        # A phrase cut short by truncation (its last character not in any kept token) is dropped whole.
        complete = any(e == hi for (s, e), ok in zip(offsets[:length], inside) if ok)
        masks.append(torch.tensor(inside, dtype=torch.bool) if complete else None)
    return masks


class Detector:
    """The data stage's DetectionModel (mumu/data/contracts.py)."""

    def __init__(self, model, processor, cfg: DetectConfig, device: torch.device | str = "cpu"):
        self.model = model.to(device).eval()
        self.processor = processor
        self.cfg = cfg
        self.device = torch.device(device)

    @classmethod
    def from_config(cls, cfg: DetectConfig, device: torch.device | str = "cpu") -> "Detector":
        model, processor = build_grounding_dino(cfg.model)
        return cls(model, processor, cfg, device)

    @torch.no_grad()
    def detect(self, images: list[Image.Image], phrases: list[list[str]]) -> list[list[Detection]]:
        if len(images) != len(phrases):
            raise ValueError(f"detect: {len(images)} images but {len(phrases)} phrase lists")
        results: list[list[Detection]] = [[] for _ in images]
        todo = [i for i, ps in enumerate(phrases) if any(clean_phrase(p) for p in ps)]
        # Each image is preprocessed alone and batches hold images of one processed shape: padding
        # images to a common size changes the backbone features near the pad, so mixed-size batches
        # would make the boxes depend on batch composition. Grouping keeps results batch-invariant.
        pixels = {i: self._pixels(images[i]) for i in todo}
        groups: dict[tuple[int, ...], list[int]] = {}
        for i in todo:
            groups.setdefault(tuple(pixels[i].shape), []).append(i)
        for members in groups.values():
            for start in range(0, len(members), self.cfg.batch_size):
                chunk = members[start : start + self.cfg.batch_size]
                for i, dets in zip(chunk, self._detect_batch([pixels[i] for i in chunk], [images[i] for i in chunk],
                                                            [phrases[i] for i in chunk])):
                    results[i] = dets
        return results

    def _pixels(self, image: Image.Image) -> torch.Tensor:
        out = self.processor.image_processor(images=[image.convert("RGB")], return_tensors="pt")
        return out["pixel_values"][0]

    def _detect_batch(self, pixels: list[torch.Tensor], images: list[Image.Image], phrases: list[list[str]]):
        prompts, spans = zip(*(build_prompt(ps) for ps in phrases))
        max_len = self.model.config.max_text_len
        enc = self.processor.tokenizer(
            list(prompts), padding="longest", truncation=True, max_length=max_len,
            return_offsets_mapping=True, return_tensors="pt",
        )
        offsets = enc.pop("offset_mapping").tolist()
        pixel_values = torch.stack(pixels).to(self.device, self.model.dtype)
        outputs = self.model(
            pixel_values=pixel_values,
            pixel_mask=torch.ones_like(pixel_values[:, 0], dtype=torch.long),  # no padding: one shape per batch
            **{k: v.to(self.device) for k, v in enc.items()},
        )
        probs = outputs.logits.float().sigmoid().cpu()  # [B, queries, max_text_len]
        boxes = outputs.pred_boxes.float().cpu()  # [B, queries, 4] cx, cy, w, h relative to the image
        length = enc["input_ids"].shape[1]
        return [
            self._select(probs[b, :, :length], boxes[b], phrase_token_masks(offsets[b], spans[b], length), image.size)
            for b, image in enumerate(images)
        ]

    def _select(self, probs: torch.Tensor, boxes: torch.Tensor, token_masks, size: tuple[int, int]) -> list[Detection]:
        width, height = size
        xyxy = center_to_corners_format(boxes) * torch.tensor([width, height, width, height], dtype=boxes.dtype)
        xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, width)
        xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, height)
        nonempty = (xyxy[:, 2] > xyxy[:, 0]) & (xyxy[:, 3] > xyxy[:, 1])  # boxes entirely outside the image
        # Grounding DINO keeps a box when its best token beats box_threshold and labels it with the
        # tokens above text_threshold. Per phrase, the score is the max over the phrase's tokens, so
        # both tests become score >= threshold: a box strong on "dog" is not given to "cat".
        threshold = max(self.cfg.box_threshold, self.cfg.text_threshold)
        detections: list[Detection] = []
        for k, mask in enumerate(token_masks):
            if mask is None:
                continue
            score = probs[:, mask].max(dim=1).values
            idx = torch.nonzero((score >= threshold) & nonempty).flatten()
            if not idx.numel():
                continue
            kept = idx[nms(xyxy[idx], score[idx], self.cfg.nms_iou, limit=self.cfg.max_boxes_per_phrase)]
            detections += [Detection(k, tuple(float(v) for v in xyxy[q].tolist()), float(score[q])) for q in kept]
        return detections

