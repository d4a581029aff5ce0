"""Box-prompted segmentation for the data stage: transformers' SamModel (tiny from config, or a
published SAM checkpoint). One mask per box, at the image's own size.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import SamConfig, SamImageProcessorPil, SamModel, SamProcessor

from models.hf import build_seeded, empty_weights_config, merge_config, pretrained_kwargs, torch_dtype
from mumu.config import ModelSource
from mumu.config.data import SegmentConfig

Box = tuple[float, float, float, float]

TINY_SAM: dict[str, Any] = {
    "image_size": 64,  # processor: longest edge, padded to a square of this side
    "patch_size": 8,
    "hidden_size": 32,  # shared width of the image embedding, prompt encoder and mask decoder
    "vision": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "window_size": 4,
               "global_attn_indexes": [1], "mlp_ratio": 2.0},
    "mask_decoder": {"mlp_dim": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "iou_head_hidden_dim": 32},
}


def build_sam(source: ModelSource):
    """(SamModel, SamProcessor) for a source."""
    if (bundled := empty_weights_config(source)) is not None:
        # SAM's published image processing is the processor's default (1024 px longest edge, padded square).
        processor = SamProcessor(image_processor=SamImageProcessorPil())
        return SamModel(SamConfig.from_pretrained(bundled)).to(torch_dtype(source.dtype)).eval(), processor
    if source.is_pretrained:
        kwargs = pretrained_kwargs(source)
        processor = SamProcessor.from_pretrained(source.location, **kwargs)
        model = SamModel.from_pretrained(source.location, dtype=torch_dtype(source.dtype), **kwargs)
        return model.eval(), processor
    cfg = merge_config(TINY_SAM, source.config or {})
    size, patch, width = cfg["image_size"], cfg["patch_size"], cfg["hidden_size"]
    mask_side = 4 * (size // patch)  # the mask decoder upsamples the embedding grid 4x
    # The Pil processor: torchvision (needed by the default fast one) does not run on this machine.
    image_processor = SamImageProcessorPil(
        size={"longest_edge": size}, pad_size={"height": size, "width": size},
        mask_size={"longest_edge": mask_side}, mask_pad_size={"height": mask_side, "width": mask_side},
    )
    processor = SamProcessor(image_processor=image_processor)
    config = SamConfig(
        vision_config={**cfg["vision"], "image_size": size, "patch_size": patch, "output_channels": width,
                       "num_pos_feats": width // 2},
        prompt_encoder_config={"hidden_size": width, "image_size": size, "patch_size": patch},
        mask_decoder_config={**cfg["mask_decoder"], "hidden_size": width},
    )
    model = build_seeded(lambda: SamModel(config), source.seed)
    return model.to(torch_dtype(source.dtype)).eval(), processor


class Segmenter:
    """The data stage's SegmentationModel (mumu/data/contracts.py)."""

    def __init__(self, model, processor, cfg: SegmentConfig, device: torch.device | str = "cpu"):
        self.model = model.to(device).eval()
        self.processor = processor
        self.cfg = cfg
        self.device = torch.device(device)

    @classmethod
    def from_config(cls, cfg: SegmentConfig, device: torch.device | str = "cpu") -> "Segmenter":
        model, processor = build_sam(cfg.model)
        return cls(model, processor, cfg, device)

    @torch.no_grad()
    def segment(self, images: list[Image.Image], boxes: list[list[Box]]) -> list[np.ndarray]:
        """Per image a bool array [n_boxes, H, W] at the image's size (H, W = image.height, image.width)."""
        if len(images) != len(boxes):
            raise ValueError(f"segment: {len(images)} images but {len(boxes)} box lists")
        for bs in boxes:
            for b in bs:
                if len(b) != 4:
                    raise ValueError(f"segment: a box must be (x0, y0, x1, y1), got {b!r}")
        results = [np.zeros((0, image.height, image.width), dtype=bool) for image in images]
        todo = [i for i, bs in enumerate(boxes) if len(bs)]
        for start in range(0, len(todo), self.cfg.batch_size):
            chunk = todo[start : start + self.cfg.batch_size]
            for i, masks in zip(chunk, self._segment_batch([images[i] for i in chunk], [boxes[i] for i in chunk])):
                results[i] = masks
        return results

    def _segment_batch(self, images: list[Image.Image], boxes: list[list[Box]]) -> list[np.ndarray]:
        # The processor wants the same number of boxes for every image of a call, so each image is
        # prepared alone (its boxes scaled like its pixels); the heavy image encoder then runs once
        # for the batch (every image is padded to the same square, so batching changes nothing), and
        # the light prompt encoder + mask decoder run per image with all of that image's boxes.
        prepared = [
            self.processor(images=[image.convert("RGB")], input_boxes=[[list(map(float, b)) for b in bs]],
                           return_tensors="pt")
            for image, bs in zip(images, boxes)
        ]
        pixel_values = torch.cat([p["pixel_values"] for p in prepared]).to(self.device, self.model.dtype)
        embeddings = self.model.get_image_embeddings(pixel_values)
        out = []
        for b, p in enumerate(prepared):
            # multimask_output=False: SAM's single-mask head, which its authors recommend for
            # unambiguous prompts such as boxes (the 3-mask head exists for ambiguous single points).
            outputs = self.model(
                image_embeddings=embeddings[b : b + 1],
                input_boxes=p["input_boxes"].to(self.device, self.model.dtype),
                multimask_output=False,
            )
            masks = self.processor.post_process_masks(
                outputs.pred_masks.float().cpu(), p["original_sizes"], p["reshaped_input_sizes"],
                mask_threshold=self.cfg.mask_threshold,
            )[0]  # [n_boxes, 1, H, W] bool
            out.append(masks[:, 0].numpy().astype(bool))
        return out
