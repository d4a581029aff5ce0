"""Prompt encoder: Idefics2 reads an interleaved prompt (text + image crops) -> per-token hidden states.

Tokenization goes through the Idefics2 processor (it expands each `<image>` into
`<fake_token_around_image> <image>*image_seq_len <fake_token_around_image>`); images go through its
image processor with image splitting off (one crop = one image = one entity). Bookkeeping of which
positions belong to which image is read back from the runs of `<image>` ids.

MUMU's `bypass_resampler`: the perceiver resampler (64 learned latents that mix all patches) is skipped.
Each image keeps `image_tokens` = n*n tokens: SigLIP patch features -> Idefics2's modality projection
(per patch, to the LM width) -> adaptive average pooling of the image's *valid* patch grid (padding
patches excluded) to an n x n grid, read row-major -> the perceiver's final RMSNorm (`image_feature_norm`),
so the LM reads image tokens at the scale it was trained on. So every token is a spatial region of the crop.

Cached features (models/cached.py): a prompt whose hidden states are cached runs no encoder at all, and an image
whose vision-tower grid is cached skips the image processor and the tower; the rest is computed as above.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import PIL.Image
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from torch import nn
from transformers import Idefics2Model

from models.cached import CachedFeatures, pad_grids
from models.hf import build_idefics2, idefics2_config
from models.vision_tower import VisionTower, real_patch_grids
from mumu.config.base import ModelSource
from mumu.config.model import EncoderConfig
from mumu.errors import UserError

Prompt = list  # list[str | PIL.Image.Image]


@dataclass
class PromptTokens:
    input_ids: torch.Tensor  # [B, L] long
    attention_mask: torch.Tensor  # [B, L] long (1 = real token)
    pixel_values: torch.Tensor | None  # [N, 3, H, W] kept images, prompt order, batch order
    pixel_attention_mask: torch.Tensor | None  # [N, H, W] bool
    entity_token_mask: torch.Tensor  # [B, K, L] bool: the image tokens of entity k of sample b
    entity_valid: torch.Tensor  # [B, K] bool
    kept: list[list[int]] = field(default_factory=list)  # per sample: indices of its image segments kept
    dropped: int = 0  # images dropped by truncation
    # From the feature cache. cached_hidden: per sample, its real tokens' hidden states, or None = computed here
    # ([] = none cached); a cached sample's images are in neither pixel_values nor image_grids.
    # image_grids: per kept image of the computed samples, its vision-tower grid, or None = the next image of
    # pixel_values ([] = every image is in pixel_values).
    cached_hidden: list[torch.Tensor | None] = field(default_factory=list)
    image_grids: list[torch.Tensor | None] = field(default_factory=list)

    def to(self, device) -> "PromptTokens":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return PromptTokens(move(self.input_ids), move(self.attention_mask), move(self.pixel_values),
                            move(self.pixel_attention_mask), move(self.entity_token_mask),
                            move(self.entity_valid), self.kept, self.dropped,
                            [move(t) for t in self.cached_hidden], [move(t) for t in self.image_grids])


def _image_runs(ids: list[int], image_id: int) -> list[tuple[int, int]]:
    """[start, end) of each maximal run of image ids."""
    runs, i = [], 0
    while i < len(ids):
        if ids[i] == image_id:
            j = i
            while j < len(ids) and ids[j] == image_id:
                j += 1
            runs.append((i, j))
            i = j
        else:
            i += 1
    return runs


def _prompt_key(ids: list[int], images) -> tuple:
    """A prompt's identity for `PromptEncoder.remember`: its token ids and its images' pixels (the ids of an image
    are the same for every image)."""
    return tuple(ids), tuple(hashlib.sha256(f"{im.mode}{im.size}".encode() + im.tobytes()).hexdigest() for im in images)


def truncate_at_segment(ids: list[int], runs: list[tuple[int, int]], limit: int, image_id: int):
    """Cut `ids` to at most `limit` tokens without cutting an image: an image whose tokens (or closing
    boundary token) would be cut is dropped whole, and so is everything after it.
    Returns (ids, number of images kept)."""
    if len(ids) <= limit:
        return ids, len(runs)
    cut = limit
    for k, (start, end) in enumerate(runs):
        if end < cut:  # tokens and closing boundary (at `end`) fit
            continue
        if start >= 1 + cut:  # starts after the cut: already gone
            return ids[:cut], k
        cut = start - 1  # before the image's opening boundary token...
        if cut >= 1 and ids[cut - 1] == image_id:  # ...unless it is the previous image's closing one
            cut += 1
        return ids[:cut], k
    return ids[:cut], len(runs)


class PromptEncoder(nn.Module):
    """`lazy=True` builds only the processor and config: the Idefics2 weights are loaded (from `source`, default
    cfg.model) on the first prompt that needs computing. Training under a complete prompt cache never needs them
    (the cached states, the empty prompt's and the preview prompts' included: `remember`), so a frozen 8B MLLM
    takes no memory there."""

    def __init__(self, cfg: EncoderConfig, model=None, processor=None, *, source: ModelSource | None = None,
                 lazy: bool = False):
        super().__init__()
        self.cfg, self.source = cfg, source or cfg.model
        if model is not None:
            config = model.config
        elif lazy:
            config, own = idefics2_config(self.source)
            processor = processor or own
        else:
            model, own = build_idefics2(self.source, model_cls=Idefics2Model)
            config, processor = model.config, processor or own
        self.config, self.processor = config, processor
        # With the resampler bypassed each image is `image_tokens` pooled tokens, so the processor must emit that many.
        if cfg.bypass_resampler:
            self.processor.image_seq_len = cfg.image_tokens
        self.image_seq_len = self.processor.image_seq_len
        tok = self.processor.tokenizer
        self.image_token_id = tok.convert_tokens_to_ids(self.processor.image_token)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.fallback_id = tok.bos_token_id if tok.bos_token_id is not None else self.pad_id
        # Moves with the module (.to, accelerate): where a lazily loaded model must go.
        self.register_buffer("_device_anchor", torch.empty(0), persistent=False)
        self.known_states: dict[tuple, torch.Tensor] = {}  # _prompt_key -> cached hidden states (`remember`)
        self.model = None
        if model is not None:
            self._attach(model)

    def _attach(self, model) -> None:
        self.model = model
        self.vision = VisionTower(model.vision_model, self.processor.image_processor)  # one crop, one entity
        if self.cfg.gradient_checkpointing:
            # Non-reentrant: the LM's inputs (embeddings of frozen tokens) need not require grad.
            model.text_model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self._setup_trainable()

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def load(self):
        """The Idefics2 model, loaded now if it was not (see `lazy`)."""
        if self.model is None:
            model, _ = build_idefics2(self.source, model_cls=Idefics2Model)
            self._attach(model.to(self._device_anchor.device))
            self.model.train(self.training)
        return self.model

    def remember(self, features: CachedFeatures, images: list[PIL.Image.Image] = ()) -> None:
        """Take the cached states of one prompt (its token ids, and `images`, its images in order) for every later
        prompt of the same ids and pixels (the empty prompt of CFG and sampling, the training previews' prompts):
        those then run no encoder."""
        ids = features.prompt_ids.tolist()
        if len(features.prompt) != len(ids):
            raise ValueError(f"cached states of {len(features.prompt)} tokens for {len(ids)} token ids")
        self.known_states[_prompt_key(ids, images)] = features.prompt

    @property
    def hidden_size(self) -> int:
        return int(self.config.text_config.hidden_size)

    def lora_target_regex(self) -> str:
        mods = "|".join(self.cfg.lora.target_modules)
        regex = rf"text_model\..*\.({mods})"
        if self.cfg.lora_projector:
            regex = rf"({regex}|connector\.modality_projection\.(gate_proj|up_proj|down_proj))"
        return regex

    def _setup_trainable(self) -> None:
        mode = self.cfg.train_language_model
        self.model.requires_grad_(False)
        if mode == "full":
            self.model.text_model.requires_grad_(True)
            self.model.connector.requires_grad_(True)
        elif mode == "lora":
            lora = self.cfg.lora
            # LoRA A is initialised from the global RNG: seed it, or two runs of one config would differ.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.cfg.model.seed + 2)
                inject_adapter_in_model(
                    LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                               target_modules=self.lora_target_regex()),
                    self.model,
                )
            for name, p in self.model.named_parameters():
                p.requires_grad_("lora_" in name)
        if not self.cfg.freeze_vision:
            self.model.vision_model.requires_grad_(True)

    # --- tokenization + bookkeeping ---------------------------------------------------------------------
    def tokenize(self, prompts: list[Prompt], features: list[CachedFeatures | None] | None = None) -> PromptTokens:
        """Token ids and bookkeeping of a batch of prompts; `features` (per prompt, optional) are cached outputs
        that replace the image processor and the encoder's forward where present."""
        texts, images = [], []
        for prompt in prompts:
            parts, imgs = [], []
            for seg in prompt:
                if isinstance(seg, str):
                    if seg.strip():
                        parts.append(seg.strip())
                elif isinstance(seg, PIL.Image.Image):
                    parts.append(self.processor.image_token)
                    imgs.append(seg)
                else:
                    raise UserError(f"prompt segment must be text or a PIL image, not {type(seg).__name__}")
            texts.append(" ".join(parts))
            images.append(imgs)
        encoded = self.processor(text=texts, padding=False)["input_ids"]
        limit = self.cfg.max_text_tokens
        rows, spans, kept, dropped = [], [], [], 0
        for ids, imgs in zip(encoded, images):
            ids = list(ids)
            runs = _image_runs(ids, self.image_token_id)
            if len(runs) != len(imgs) or any(e - s != self.image_seq_len for s, e in runs):
                raise ValueError(f"expected {len(imgs)} runs of {self.image_seq_len} image tokens, found {runs}")
            ids, n_keep = truncate_at_segment(ids, runs, limit, self.image_token_id)
            dropped += len(runs) - n_keep
            ids = ids or [self.fallback_id]  # the empty prompt (CFG) still needs one position
            rows.append(ids)
            spans.append(runs[:n_keep])
            kept.append(list(range(n_keep)))
        batch, length, k_max = len(rows), max(len(r) for r in rows), max(len(s) for s in spans)
        input_ids = torch.full((batch, length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        entity_token_mask = torch.zeros((batch, k_max, length), dtype=torch.bool)
        entity_valid = torch.zeros((batch, k_max), dtype=torch.bool)
        for b, (ids, runs) in enumerate(zip(rows, spans)):
            off = length - len(ids) if self.cfg.padding_side == "left" else 0
            input_ids[b, off:off + len(ids)] = torch.tensor(ids)
            attention_mask[b, off:off + len(ids)] = 1
            for k, (s, e) in enumerate(runs):
                entity_token_mask[b, k, off + s:off + e] = True
                entity_valid[b, k] = True
        features = features or [None] * batch
        cached_hidden = [self._cached_states(f, ids) for f, ids in zip(features, rows)]
        if self.known_states:
            cached_hidden = [h if h is not None else self.known_states.get(_prompt_key(ids, imgs))
                             for h, ids, imgs in zip(cached_hidden, rows, images)]
        flat, grids = [], []
        for b in range(batch):
            if cached_hidden[b] is not None:
                continue  # no encoder runs for this sample: its images are not needed
            cached_images = features[b].images if features[b] is not None else ()
            for i in kept[b]:
                grid = cached_images[i] if i < len(cached_images) else None
                grids.append(grid)
                if grid is None:
                    flat.append(images[b][i])
        if any(g is not None for g in grids) and not self.cfg.freeze_vision:
            raise ValueError("cached vision-tower features given to an encoder that trains its vision tower")
        pixel_values, pixel_mask = self.preprocess_images(flat) if flat else (None, None)
        return PromptTokens(input_ids, attention_mask, pixel_values, pixel_mask, entity_token_mask,
                            entity_valid, kept, dropped,
                            cached_hidden if any(h is not None for h in cached_hidden) else [],
                            grids if any(g is not None for g in grids) else [])

    def preprocess_images(self, images: list[PIL.Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompt images -> (pixel_values [N, 3, H, W] padded to the largest, pixel mask [N, H, W] bool)."""
        self.load()  # these images are to be computed
        return self.vision.preprocess(images)

    def _cached_states(self, features: CachedFeatures | None, ids: list[int]) -> torch.Tensor | None:
        """The cached hidden states of a prompt tokenized to `ids`, or None when it has none."""
        if features is None or features.prompt is None:
            return None
        if features.prompt_ids is None or features.prompt_ids.tolist() != ids or len(features.prompt) != len(ids):
            raise UserError("cached prompt states belong to other token ids than this tokenizer gives: the feature "
                            "cache was written by another encoder; run `mumu cache-features` again")
        return features.prompt

    # --- forward ------------------------------------------------------------------------------------------
    def vision_tower(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[N, 3, H, W] -> (the vision tower's output [N, Hp*Wp, Dv], [N, Hp, Wp] bool mask of the real patches)."""
        self.load()
        return self.vision(pixel_values, pixel_mask, grad=torch.is_grad_enabled() and not self.cfg.freeze_vision)

    def vision_grids(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> list[torch.Tensor]:
        """Per image, the vision tower's output on its real patches [rows, cols, Dv] (models/vision_tower.py)."""
        return real_patch_grids(*self.vision_tower(pixel_values, pixel_mask))

    def image_features(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor) -> torch.Tensor:
        """[N, 3, H, W] -> [N, image_seq_len, D] in the LM's embedding space."""
        return self.project_features(*self.vision_tower(pixel_values, pixel_mask))

    def project_features(self, vis: torch.Tensor, patch_mask: torch.Tensor) -> torch.Tensor:
        """Vision-tower output [N, Hp*Wp, Dv] + real-patch mask [N, Hp, Wp] -> [N, image_seq_len, D]."""
        self.load()
        if not self.cfg.bypass_resampler:
            return self.model.connector(vis, attention_mask=patch_mask.view(vis.shape[0], -1))
        proj = self.model.connector.modality_projection(vis)  # [N, Hp*Wp, D]
        n_side = round(self.image_seq_len**0.5)
        n, hp, wp = patch_mask.shape
        out = []
        for i in range(n):
            rows, cols = int(patch_mask[i, :, 0].sum()), int(patch_mask[i, 0, :].sum())  # padding is bottom/right
            g = proj[i].view(hp, wp, -1)[:rows, :cols].permute(2, 0, 1)
            out.append(F.adaptive_avg_pool2d(g, n_side).flatten(1).transpose(0, 1))
        pooled = torch.stack(out)
        if self.cfg.image_feature_norm == "resampler":  # the bypassed perceiver's output norm (see EncoderConfig)
            pooled = self.model.connector.perceiver_resampler.norm(pooled)
        return pooled

    def _prompt_images(self, tokens: PromptTokens) -> torch.Tensor | None:
        """[N, image_seq_len, D] for the images of the samples computed here, cached grids or pixels."""
        if not tokens.image_grids:
            if tokens.pixel_values is None:
                return None
            return self.image_features(tokens.pixel_values, tokens.pixel_attention_mask)
        computed = iter(self.vision_grids(tokens.pixel_values, tokens.pixel_attention_mask)
                        if tokens.pixel_values is not None else ())
        grids = [g if g is not None else next(computed) for g in tokens.image_grids]
        return self.project_features(*pad_grids(grids))

    def _language_model(self, ids: torch.Tensor, mask: torch.Tensor, feats: torch.Tensor | None) -> torch.Tensor:
        embeds = self.load().get_input_embeddings()(ids)
        if feats is not None:
            embeds = self.model.inputs_merger(ids, embeds, feats.reshape(-1, feats.shape[-1]))
        # Positions follow the mask, so left padding does not shift the real tokens' positions.
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model.text_model(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids,
                                    use_cache=False)
        return out.last_hidden_state

    def forward(self, tokens: PromptTokens) -> torch.Tensor:
        ids, mask = tokens.input_ids, tokens.attention_mask
        if not tokens.cached_hidden:
            return self._language_model(ids, mask, self._prompt_images(tokens))
        # Samples with cached states run nothing; the rest run as a smaller batch. Real tokens never attend to
        # padding, so a sample's states do not depend on the batch it is in; padding positions stay zero.
        rows = [b for b, h in enumerate(tokens.cached_hidden) if h is None]
        computed = None
        if rows:
            computed = self._language_model(ids[rows], mask[rows], self._prompt_images(tokens))
        ref = computed if computed is not None else next(h for h in tokens.cached_hidden if h is not None)
        out = ref.new_zeros((*ids.shape, ref.shape[-1]))
        if computed is not None:
            out[rows] = computed
        for b, h in enumerate(tokens.cached_hidden):
            if h is not None:
                out[b, mask[b].bool()] = h.to(out.dtype)
        return out

    # --- persistence ---------------------------------------------------------------------------------------
    def base_state_dict(self) -> dict[str, torch.Tensor]:
        """The Idefics2 weights without LoRA layers, under the plain model's names."""
        out = {}
        for k, v in self.load().state_dict().items():
            if "lora_" in k:
                continue
            out[k.replace(".base_layer.", ".")] = v
        return out

    def lora_state_dict(self) -> dict[str, torch.Tensor]:
        return get_peft_model_state_dict(self.load())

    def load_lora_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        result = set_peft_model_state_dict(self.load(), sd)
        missing = [k for k in result.missing_keys if "lora_" in k]
        if result.unexpected_keys or missing:
            raise ValueError(f"encoder LoRA weights do not match: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}")
