"""One loading path for every Hugging Face model: `from_pretrained` on a hub id or directory, or
build from a config with seeded weights (the tiny profile). Plus the tiny tokenizers the tests and
the tiny profile need, trained locally in well under a second, since no hub is reachable here.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import (Idefics2Config, Idefics2ForConditionalGeneration, Idefics2ImageProcessorPil,
                          Idefics2Processor, PreTrainedTokenizerFast)

from mumu.config import ModelSource
from mumu.errors import UserError

WORDS_FILE = Path(__file__).resolve().parent.parent / "mumu" / "resources" / "words.txt"

# The published configs of the real profiles' checkpoints (config JSON only, no weights; see configs/README.md),
# so their full-size models can be assembled without the hub: `empty_weights()`.
BUNDLED_CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
BUNDLED_CONFIGS = {
    "HuggingFaceM4/idefics2-8b": "idefics2-8b",
    "stabilityai/stable-diffusion-xl-base-1.0": "sdxl-base-1.0",
    "IDEA-Research/grounding-dino-base": "grounding-dino-base",
    "facebook/sam-vit-huge": "sam-vit-huge",
}
_EMPTY_WEIGHTS: ContextVar[bool] = ContextVar("mumu_empty_weights", default=False)


@contextmanager
def empty_weights() -> Iterator[None]:
    """Inside, a pretrained source is built from its bundled published config with every tensor on PyTorch's
    meta device: the full-size model of a real profile with no download and no memory, to check shapes only."""
    token = _EMPTY_WEIGHTS.set(True)
    try:
        with torch.device("meta"):
            yield
    finally:
        _EMPTY_WEIGHTS.reset(token)


def empty_weights_config(source: ModelSource) -> Path | None:
    """The bundled config folder a pretrained source is built from inside `empty_weights()`, else None."""
    if not (_EMPTY_WEIGHTS.get() and source.is_pretrained):
        return None
    name = BUNDLED_CONFIGS.get(source.pretrained)
    if name is None:
        raise UserError(f"no bundled config for {source.pretrained!r} (bundled: {', '.join(BUNDLED_CONFIGS)})")
    return BUNDLED_CONFIGS_DIR / name / (source.subfolder or "")


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in {"", "0", "false", "False"}


def pretrained_kwargs(source: ModelSource) -> dict[str, Any]:
    """Keyword arguments shared by every `from_pretrained` call for this source."""
    kwargs: dict[str, Any] = {"revision": source.revision, "local_files_only": offline()}
    if source.subfolder:
        kwargs["subfolder"] = source.subfolder
    return {k: v for k, v in kwargs.items() if v is not None}


def build_seeded(build: Callable[[], torch.nn.Module], seed: int) -> torch.nn.Module:
    """Build a model with weights initialised under `seed`, without disturbing the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def default_words() -> list[str]:
    return WORDS_FILE.read_text().split()


def build_word_tokenizer(words: list[str] | None = None, *, specials: list[str] | None = None):
    """A whitespace word-level tokenizer over `words` (lower-cased), as a transformers fast tokenizer.

    Word-level keeps decoded text readable (real words), which keeps the tiny captioner's output
    usable by the entity stage.
    """
    # Here, not at the top: tokenizers' `models` would shadow this package's name in the module.
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    words = sorted(set(words or default_words()))
    specials = specials or ["<unk>", "<s>", "</s>", "<pad>"]
    vocab = {tok: i for i, tok in enumerate(specials + [w for w in words if w not in specials])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins word tokens with single spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


# --- Idefics2 (captioner and generator encoder share it) -------------------------------------------

TINY_IDEFICS2: dict[str, Any] = {
    "image_size": 64,  # images are resized to this longest edge
    "image_seq_len": 4,  # tokens per image after the perceiver resampler
    "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
               "patch_size": 16},
    "perceiver": {"hidden_size": 32, "resampler_depth": 1, "resampler_n_heads": 2, "resampler_head_dim": 8,
                  "num_key_value_heads": 1},
    "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
             "num_key_value_heads": 1, "max_position_embeddings": 512},
}


def merge_config(defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`overrides` laid over `defaults`, nested dicts merged key by key (a tiny profile names only what it changes)."""
    out = dict(defaults)
    for key, value in overrides.items():
        out[key] = merge_config(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def build_tiny_idefics2_processor(cfg: dict[str, Any] | None = None):
    cfg = merge_config(TINY_IDEFICS2, cfg or {})
    size = cfg["image_size"]
    image_processor = Idefics2ImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": size, "shortest_edge": min(size, 32)}
    )
    # The processor adds its image tokens to the tokenizer: the model's vocab is sized after this.
    return Idefics2Processor(
        image_processor=image_processor, tokenizer=build_word_tokenizer(), image_seq_len=cfg["image_seq_len"]
    )


def idefics2_config(source: ModelSource):
    """(Idefics2Config, processor) of a source without its weights: what tokenizing needs, and the shapes."""
    bundled = empty_weights_config(source)
    if bundled is not None:
        config = Idefics2Config.from_pretrained(bundled)
        return config, bundled_idefics2_processor(config)
    if source.is_pretrained:
        kwargs = pretrained_kwargs(source)
        return (Idefics2Config.from_pretrained(source.location, **kwargs),
                Idefics2Processor.from_pretrained(source.location, **kwargs))
    cfg = merge_config(TINY_IDEFICS2, source.config or {})
    processor = build_tiny_idefics2_processor(cfg)
    tokenizer = processor.tokenizer
    config = Idefics2Config(
        vision_config={**cfg["vision"], "image_size": cfg["image_size"]},
        perceiver_config={**cfg["perceiver"], "resampler_n_latents": cfg["image_seq_len"]},
        text_config={**cfg["text"], "vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id},
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    return config, processor


def build_idefics2(source: ModelSource, model_cls=None):
    """(model, processor) for an Idefics2 source. `model_cls` defaults to Idefics2ForConditionalGeneration."""
    model_cls = model_cls or Idefics2ForConditionalGeneration
    if source.is_pretrained and empty_weights_config(source) is None:
        _, processor = idefics2_config(source)
        model = model_cls.from_pretrained(source.location, dtype=torch_dtype(source.dtype), **pretrained_kwargs(source))
        return model, processor
    config, processor = idefics2_config(source)
    model = model_cls(config) if source.is_pretrained else build_seeded(lambda: model_cls(config), source.seed)
    return model.to(torch_dtype(source.dtype)), processor


def bundled_idefics2_processor(config):
    """An Idefics2 processor for a bundled config: the published image processing (980 px longest edge) and
    image tokens at the published ids. The published tokenizer (32,000 SentencePiece pieces) is not bundled: a
    word tokenizer padded to 32,000 entries stands in, so the processor adds its <fake_token_around_image>,
    <image> and <end_of_utterance> at 32000-32002 as on the hub."""
    words = default_words()
    filler = [f"<unused{i}>" for i in range(32000 - 4 - len(set(words)))]  # 4 = the word tokenizer's specials
    tokenizer = build_word_tokenizer(words + filler)
    image_size = config.vision_config.image_size
    processor = Idefics2Processor(
        image_processor=Idefics2ImageProcessorPil(size={"longest_edge": image_size, "shortest_edge": 378}),
        tokenizer=tokenizer, image_seq_len=config.perceiver_config.resampler_n_latents,
    )
    if tokenizer.convert_tokens_to_ids("<image>") != config.image_token_id:
        raise ValueError(f"stand-in tokenizer puts <image> at {tokenizer.convert_tokens_to_ids('<image>')}, "
                         f"the config at {config.image_token_id}")
    return processor
