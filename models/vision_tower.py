"""Idefics2's vision tower (SigLIP) and its image processor, on their own: what the prompt encoder runs on each
prompt image before the connector, and all the feature cache needs when it caches only vision features.

`VisionTower.load` reads just the tower from an Idefics2 checkpoint (transformers' `key_mapping` renames its
`vision_model.*` tensors and skips the rest): 0.42 B of idefics2-8b's 8.27 B parameters (0.8 of 16.5 GB in
bf16), so cache-features for a recipe that trains the language model (mumu-sdxl with `train.features.vision`
on: LoRA) never holds the whole model it does not run.
"""

from __future__ import annotations

import PIL.Image
import torch
from torch import nn
from transformers import Idefics2Model, Idefics2Processor
from transformers.models.idefics2.modeling_idefics2 import Idefics2VisionTransformer

from models.hf import build_idefics2, empty_weights_config, pretrained_kwargs, torch_dtype
from mumu.config import ModelSource

# An Idefics2Model's tensors are `vision_model.*`, an Idefics2ForConditionalGeneration's `model.vision_model.*`.
_VISION_KEYS = {r"^(model\.)?vision_model\.": ""}


class VisionTower:
    """Prompt images → the tower's patch features. Holds the module without owning it: inside the prompt encoder
    the module stays `model.vision_model`, under the names its checkpoints use."""

    def __init__(self, module: nn.Module, image_processor):
        self.module, self.image_processor = module, image_processor
        # One crop is one entity: no 4+1 splitting.
        self.image_processor.do_image_splitting = False
        self.patch_size = int(module.config.patch_size)

    @classmethod
    def load(cls, source: ModelSource) -> "VisionTower":
        """The tower of an Idefics2 source, read alone from a checkpoint. Any other source goes through the one
        Idefics2 builder and keeps its tower: built from a config, the whole model under its seed, so the weights
        are those the whole model gets; a bundled config under `empty_weights()`, on the meta device (no memory)."""
        if source.is_pretrained and empty_weights_config(source) is None:
            kwargs = pretrained_kwargs(source)
            module = Idefics2VisionTransformer.from_pretrained(source.location, key_mapping=_VISION_KEYS,
                                                               dtype=torch_dtype(source.dtype), **kwargs)
            return cls(module, Idefics2Processor.from_pretrained(source.location, **kwargs).image_processor)
        model, processor = build_idefics2(source, model_cls=Idefics2Model)  # the class the prompt encoder builds
        return cls(model.vision_model, processor.image_processor)

    def preprocess(self, images: list[PIL.Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt images -> (pixel_values [N, 3, H, W] padded to the largest, pixel mask [N, H, W] bool)."""
        out = self.image_processor([[im.convert("RGB")] for im in images], return_tensors="pt")
        pixel_values = out["pixel_values"][:, 0]
        pam = out.get("pixel_attention_mask")
        return pixel_values, (pam[:, 0] if pam is not None else torch.ones_like(pixel_values[:, 0])).bool()

    def __call__(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor,
                 grad: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, 3, H, W] -> (the tower's output [N, Hp*Wp, Dv], [N, Hp, Wp] bool mask of the real patches)."""
        ps = self.patch_size
        grid = pixel_mask.unfold(1, ps, ps).unfold(2, ps, ps)
        patch_mask = grid.sum(dim=(-1, -2)) == ps * ps  # [N, Hp, Wp]: fully-real patches
        with torch.set_grad_enabled(grad):
            vis = self.module(pixel_values=pixel_values.to(self.module.dtype),
                              patch_attention_mask=patch_mask).last_hidden_state
        return vis, patch_mask

    def grids(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> list[torch.Tensor]:
        """Per image, the tower's output on its real patches [rows, cols, Dv] (what the feature cache holds: the
        real patches do not attend to padding, so they do not depend on the batch an image was in)."""
        return real_patch_grids(*self(pixel_values, pixel_mask))


def real_patch_grids(vis: torch.Tensor, patch_mask: torch.Tensor) -> list[torch.Tensor]:
    """The tower's output [N, Hp*Wp, Dv] cut to each image's real patches [rows, cols, Dv]."""
    n, hp, wp = patch_mask.shape
    out = []
    for i in range(n):
        rows, cols = int(patch_mask[i, :, 0].sum()), int(patch_mask[i, 0, :].sum())  # padding is bottom/right
        out.append(vis[i].view(hp, wp, -1)[:rows, :cols])
    return out
