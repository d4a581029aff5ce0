"""Image captioning for the data stage: an Idefics2 model (tiny from config, or Idefics2-8b) asked
one fixed prompt per image, decoded greedily so the same image always gets the same caption.
"""

from __future__ import annotations

import torch
from PIL import Image

from models.hf import build_idefics2
from mumu.config.data import CaptionConfig


def normalise_caption(text: str) -> str:
    """Single spaces, no leading/trailing whitespace. May be "" (the caller quarantines those)."""
    return " ".join(text.split())


class Captioner:
    """The data stage's CaptionModel (mumu/data/contracts.py)."""

    def __init__(self, model, processor, cfg: CaptionConfig, device: torch.device | str = "cpu"):
        self.model = model.to(device).eval()
        self.processor = processor
        self.cfg = cfg
        self.device = torch.device(device)
        tokenizer = processor.tokenizer
        # Decoder-only generation appends new tokens at the right end: pad on the left so every row's
        # prompt ends at the same position and the new tokens are one slice for the whole batch.
        tokenizer.padding_side = "left"
        self.prompt = self._prompt_text(cfg.prompt)
        # Never let the model emit image placeholders (Idefics2's documented `bad_words_ids`): a
        # generated <image> token would have no image features behind it.
        image_tokens = [t for t in ("<image>", "<fake_token_around_image>") if t in tokenizer.get_vocab()]
        self.bad_words_ids = [tokenizer.convert_tokens_to_ids([t]) for t in image_tokens] or None
        # Idefics2-8b ends its answers with <end_of_utterance>; stop there as well as at eos.
        eos = model.generation_config.eos_token_id
        eos = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
        if "<end_of_utterance>" in tokenizer.get_vocab():
            eos.append(tokenizer.convert_tokens_to_ids("<end_of_utterance>"))
        self.eos_token_id = sorted(set(eos)) or None
        pad = tokenizer.pad_token_id
        self.pad_token_id = pad if pad is not None else (self.eos_token_id or [0])[0]

    @classmethod
    def from_config(cls, cfg: CaptionConfig, device: torch.device | str = "cpu") -> "Captioner":
        model, processor = build_idefics2(cfg.model)
        return cls(model, processor, cfg, device)

    def _prompt_text(self, prompt: str) -> str:
        """The chat template when the processor has one (Idefics2-8b gives
        "User:<image>{prompt}<end_of_utterance>\\nAssistant:"), else "<image>{prompt}" (tiny tokenizer)."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        for owner in (self.processor, self.processor.tokenizer):
            if getattr(owner, "chat_template", None):
                return owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return "<image>" + prompt

    @torch.no_grad()
    def caption(self, images: list[Image.Image]) -> list[str]:
        captions: list[str] = []
        for start in range(0, len(images), self.cfg.batch_size):
            captions += self._caption_batch(images[start : start + self.cfg.batch_size])
        return captions

    def _caption_batch(self, images: list[Image.Image]) -> list[str]:
        inputs = self.processor(
            images=[[image.convert("RGB")] for image in images],
            text=[self.prompt] * len(images),
            padding=True,
            return_tensors="pt",
        ).to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        generated = self.model.generate(
            **inputs,
            max_new_tokens=self.cfg.max_new_tokens,
            do_sample=False,  # greedy: deterministic
            num_beams=1,
            bad_words_ids=self.bad_words_ids,
            eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id,
        )
        new_tokens = generated[:, inputs["input_ids"].shape[1] :]
        return [normalise_caption(t) for t in self.processor.batch_decode(new_tokens, skip_special_tokens=True)]
