"""The evaluation encoders: DINO ViT-S/16 (subject fidelity) and CLIP ViT-B/32 (fidelity and prompt
following), each built from a `ModelSource`.

- `pretrained`: `facebook/dino-vits16` (transformers `ViTModel`) and `openai/clip-vit-base-patch32`
  (`CLIPModel`), with the image processors and tokenizer saved beside the weights.
- `config`: tiny models with seeded weights (the tiny profile and tests); CLIP gets a locally built
  word-level tokenizer, since no hub tokenizer is reachable offline.

Images go through the *Pil image processors (no torchvision on this project's machines): PIL's
bicubic/bilinear resize is antialiased, which is also what clean-fid calls "clean" resizing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tokenizers.processors import TemplateProcessing
from transformers import (AutoTokenizer, CLIPConfig, CLIPImageProcessorPil, CLIPModel, ViTConfig, ViTImageProcessorPil,
                          ViTModel)

from models.hf import build_seeded, build_word_tokenizer, merge_config, pretrained_kwargs, torch_dtype
from mumu.config import ModelSource

# At the library's default init scale a random ViT returns almost the same CLS token for every image
# (cosine ~0.995 between different emoji), so every tiny score would read 1.000. A larger init makes
# the tiny features depend on the image (noisy copy ~0.99 vs other subject ~0.75), so the tiny run's
# scores still rank "the same subject" above "another subject".
TINY_DINO: dict[str, Any] = {
    "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
    "image_size": 32, "patch_size": 8, "initializer_range": 1.0,
}
TINY_CLIP: dict[str, Any] = {
    "projection_dim": 16,
    "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
             "max_position_embeddings": 77, "initializer_factor": 30.0},
    "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
               "image_size": 32, "patch_size": 8, "initializer_factor": 30.0},
}


def _rgb(images: list[Image.Image]) -> list[Image.Image]:
    # RGBA subjects (emoji) are judged on white, as they are shown; a plain convert("RGB") would
    # expose whatever colour the transparent pixels happen to hold.
    out = []
    for im in images:
        if im.mode in ("RGBA", "LA", "P"):
            im = im.convert("RGBA")
            bg = Image.new("RGB", im.size, (255, 255, 255))
            bg.paste(im, mask=im.getchannel("A"))
            im = bg
        out.append(im.convert("RGB"))
    return out


def _batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


class DinoEncoder:
    """DINO ViT features; the DINO score uses the last layer's CLS token (after the final LayerNorm,
    as DINO's own `get_intermediate_layers(x, 1)[0][:, 0]`)."""

    def __init__(self, model, image_processor, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.image_processor = image_processor

    @classmethod
    def from_source(cls, source: ModelSource, device: torch.device | str = "cpu") -> "DinoEncoder":
        if source.is_pretrained:
            kwargs = pretrained_kwargs(source)
            processor = ViTImageProcessorPil.from_pretrained(source.location, **kwargs)
            model = ViTModel.from_pretrained(source.location, add_pooling_layer=False,
                                             dtype=torch_dtype(source.dtype), **kwargs)
            return cls(model, processor, device)
        cfg = merge_config(TINY_DINO, source.config or {})
        size = cfg["image_size"]
        processor = ViTImageProcessorPil(size={"height": size, "width": size},
                                         image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
        model = build_seeded(lambda: ViTModel(ViTConfig(**cfg), add_pooling_layer=False), source.seed)
        return cls(model.to(torch_dtype(source.dtype)), processor, device)

    def save_pretrained(self, directory: str | Path) -> None:
        self.model.save_pretrained(directory)
        self.image_processor.save_pretrained(directory)

    @torch.inference_mode()
    def features(self, images: list[Image.Image], batch_size: int = 32) -> torch.Tensor:
        """[N, D] float32 CLS features (not normalised)."""
        out = []
        for batch in _batches(_rgb(images), batch_size):
            pixels = self.image_processor(images=batch, return_tensors="pt")["pixel_values"]
            hidden = self.model(pixel_values=pixels.to(self.device, self.model.dtype)).last_hidden_state
            out.append(hidden[:, 0].float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.model.config.hidden_size)


class ClipEncoder:
    """CLIP image and text embeddings (the projected features, as CLIPScore and clean-fid's CLIP FID use)."""

    def __init__(self, model, image_processor, tokenizer, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.image_processor = image_processor
        self.tokenizer = tokenizer

    @classmethod
    def from_source(cls, source: ModelSource, device: torch.device | str = "cpu") -> "ClipEncoder":
        if source.is_pretrained:
            kwargs = pretrained_kwargs(source)
            processor = CLIPImageProcessorPil.from_pretrained(source.location, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(source.location, **kwargs)
            model = CLIPModel.from_pretrained(source.location, dtype=torch_dtype(source.dtype), **kwargs)
            return cls(model, processor, tokenizer, device)
        cfg = merge_config(TINY_CLIP, source.config or {})
        tokenizer = build_clip_word_tokenizer(cfg["text"]["max_position_embeddings"])
        size = cfg["vision"]["image_size"]
        processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        config = CLIPConfig(
            text_config={**cfg["text"], "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
                         "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id},
            vision_config=cfg["vision"],
            **{k: v for k, v in cfg.items() if k not in ("text", "vision")},  # projection_dim, initializer_factor, ...
        )
        model = build_seeded(lambda: CLIPModel(config), source.seed)
        return cls(model.to(torch_dtype(source.dtype)), processor, tokenizer, device)

    def save_pretrained(self, directory: str | Path) -> None:
        self.model.save_pretrained(directory)
        self.image_processor.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)

    @torch.inference_mode()
    def image_embeds(self, images: list[Image.Image], batch_size: int = 32, normalize: bool = True) -> torch.Tensor:
        out = []
        for batch in _batches(_rgb(images), batch_size):
            pixels = self.image_processor(images=batch, return_tensors="pt")["pixel_values"]
            emb = self.model.get_image_features(pixel_values=pixels.to(self.device, self.model.dtype)).pooler_output
            out.append(emb.float().cpu())
        emb = torch.cat(out) if out else torch.zeros(0, self.model.config.projection_dim)
        return torch.nn.functional.normalize(emb, dim=-1) if normalize else emb

    @torch.inference_mode()
    def text_embeds(self, texts: list[str], batch_size: int = 64, normalize: bool = True) -> torch.Tensor:
        max_len = self.model.config.text_config.max_position_embeddings
        out = []
        for batch in _batches(list(texts), batch_size):
            tok = self.tokenizer(batch, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
            emb = self.model.get_text_features(input_ids=tok["input_ids"].to(self.device),
                                               attention_mask=tok["attention_mask"].to(self.device)).pooler_output
            out.append(emb.float().cpu())
        emb = torch.cat(out) if out else torch.zeros(0, self.model.config.projection_dim)
        return torch.nn.functional.normalize(emb, dim=-1) if normalize else emb


def build_clip_word_tokenizer(max_length: int = 77):
    """The tiny CLIP's tokenizer: the shared word-level vocabulary, wrapped as `<s> words </s>`.

    CLIP pools the text at the first end-of-text token, so every sequence must end with one; and
    CLIPTextTransformer treats `eos_token_id == 2` as a legacy config (argmax pooling), so the
    specials are ordered to put </s> at id 3.
    """
    tokenizer = build_word_tokenizer(specials=["<pad>", "<unk>", "<s>", "</s>"])
    bos, eos = tokenizer.bos_token, tokenizer.eos_token
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A {eos}",
        special_tokens=[(bos, tokenizer.bos_token_id), (eos, tokenizer.eos_token_id)],
    )
    tokenizer.model_max_length = max_length
    return tokenizer


@dataclass
class EvalEncoders:
    dino: DinoEncoder
    clip: ClipEncoder

    @classmethod
    def from_config(cls, cfg, device: torch.device | str = "cpu") -> "EvalEncoders":
        """`cfg` is an EvalConfig (its `dino` and `clip` sources)."""
        return cls(DinoEncoder.from_source(cfg.dino, device), ClipEncoder.from_source(cfg.clip, device))
