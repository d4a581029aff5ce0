"""Cross-attention capture on the UNet's attn2 layers and the attention-mask loss (UNIMO-G).

diffusers' default processor (SDPA) never materialises attention probabilities. `CaptureProcessor`
is installed on the cross-attention (`attn2`) layers only: while its `AttentionStore` is enabled it
computes the probabilities explicitly (`attn.get_attention_scores`, the library's own softmax path) and
records them; otherwise it runs the stock SDPA processor. Self-attention keeps the default processor.

To keep memory bounded at SDXL size the store can reduce each map on the fly to per-entity maps
[B, K, Q] (mean over heads, reduce over the entity's tokens) instead of keeping [B, heads, Q, L].
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0


@dataclass
class AttentionStore:
    """Shared by every CaptureProcessor of one UNet.

    enabled:   use the explicit-probability path (must stay on through backward when the UNet uses
               gradient checkpointing: the recomputed forward must run the same ops).
    recording: append maps (turned off after the forward so a checkpoint recompute adds nothing).
    latent_hw: latent size of the current forward, to turn a layer's Q into its h x w.
    layers:    None = all layers, else the layer resolutions (h) to keep.
    entity_token_mask: if set ([B, K, L] bool), maps are reduced to [B, K, Q] as they are recorded.
    """

    enabled: bool = False
    recording: bool = False
    latent_hw: tuple[int, int] = (0, 0)
    layers: tuple[int, ...] | None = None
    entity_token_mask: torch.Tensor | None = None
    token_reduce: str = "sum"
    maps: list[torch.Tensor] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    resolutions: set[int] = field(default_factory=set)  # layer resolutions (h) seen by the last forward

    def layer_hw(self, q: int) -> tuple[int, int]:
        return layer_hw(self.latent_hw, q)

    def add(self, name: str, probs: torch.Tensor) -> None:
        """probs: [B, heads, Q, L]. The reduction runs even when not recording, so a gradient-checkpoint
        recompute performs exactly the ops (and saves exactly the tensors) of the original forward."""
        h, _ = self.layer_hw(probs.shape[2])
        self.resolutions.add(h)
        if self.layers is not None and h not in self.layers:
            return
        if self.entity_token_mask is not None:
            probs = entity_maps(probs, self.entity_token_mask, self.token_reduce)
        if self.recording:
            self.maps.append(probs)
            self.names.append(name)

    def reset(self) -> None:
        self.maps, self.names, self.resolutions = [], [], set()


class CaptureProcessor(AttnProcessor2_0):
    def __init__(self, store: AttentionStore, name: str):
        super().__init__()
        self.store = store
        self.name = name

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
        if not self.store.enabled:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        # Same steps as AttnProcessor2_0 (a cross-attention in a transformer block: no spatial/group norm,
        # 3-D hidden states), with softmax(QK^T) materialised.
        residual = hidden_states
        if attn.spatial_norm is not None or attn.group_norm is not None or hidden_states.ndim != 3:
            raise NotImplementedError("attention capture supports the UNet's transformer cross-attention only")
        batch, q_len, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)  # [B*h, 1, L]
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, attention_mask)  # [B*h, Q, L]
        self.store.add(self.name, probs.view(batch, attn.heads, q_len, -1))
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def install_capture(unet) -> AttentionStore:
    """Put a CaptureProcessor on every attn2 layer; other layers keep their current processor."""
    store = AttentionStore()
    # set_attn_processor empties the dict it is given: build a fresh one, never reuse it.
    procs = {
        name: (CaptureProcessor(store, name) if ".attn2." in name else proc)
        for name, proc in unet.attn_processors.items()
    }
    if not any(isinstance(p, CaptureProcessor) for p in procs.values()):
        raise ValueError("this UNet has no attn2 (cross-attention) layers to capture")
    unet.set_attn_processor(procs)
    return store


def layer_hw(latent_hw: tuple[int, int], q: int) -> tuple[int, int]:
    """The h x w of a layer whose maps have q query pixels, for latents of latent_hw (same aspect ratio)."""
    lh, lw = latent_hw
    scale = math.sqrt(lh * lw / q)
    return round(lh / scale), round(lw / scale)


def masks_at(entity_masks: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """[B, K, H, W] masks in [0, 1] -> [B, K, h, w], area-averaged: the target a layer's maps are compared with."""
    return F.interpolate(entity_masks, size=hw, mode="area")


def entity_maps(probs: torch.Tensor, entity_token_mask: torch.Tensor, token_reduce: str) -> torch.Tensor:
    """[B, heads, Q, L] probabilities -> [B, K, Q] per-entity maps (mean over heads)."""
    weights = entity_token_mask.to(probs.dtype)
    if token_reduce == "mean":
        weights = weights / weights.sum(-1, keepdim=True).clamp(min=1)
    elif token_reduce != "sum":
        raise ValueError(f"token_reduce must be 'mean' or 'sum', not {token_reduce!r}")
    return torch.einsum("bql,bkl->bkq", probs.mean(1), weights)


def attention_mask_loss(
    maps: list[torch.Tensor],
    latent_hw: tuple[int, int],
    entity_masks: torch.Tensor,
    valid: torch.Tensor,
) -> torch.Tensor:
    """L_attn = mean over layers and valid entities of mean_pixels |CA_k - M_k|.

    maps: per layer [B, K, Q] (see entity_maps); entity_masks: [B, K, H, W] float in [0, 1]
    (resized with area averaging to each layer's h x w); valid: [B, K] bool.
    """
    if not maps or not bool(valid.any()):
        return entity_masks.new_zeros(())
    per_layer = []
    for m in maps:
        b, k, q = m.shape
        h, w = layer_hw(latent_hw, q)
        target = masks_at(entity_masks.to(m.dtype), (h, w))
        per_layer.append((m.view(b, k, h, w) - target).abs().mean(dim=(-1, -2)))  # [B, K]
    per_entity = torch.stack(per_layer).mean(0)
    v = valid.to(per_entity)  # dtype and device: `valid` may be kept on the CPU (full-size meta check)
    return (per_entity * v).sum() / v.sum()
