"""Connector: encoder hidden states -> UNet cross-attention states (1:1 positions) + SDXL's pooled vector.

A small non-causal transformer (torch's TransformerEncoder, pre-norm) over the prompt, so every
position can see the whole prompt (the Idefics2 LM is causal: early tokens never see later images).
Output position i is input position i, so the entity token bookkeeping carries through unchanged.

Pooled vector (SDXL's `text_embeds` for the text_time embedding): config `pooling`
- "mean" (default): masked mean over real (non-padding) tokens of the connector output. It does not
  depend on the padding side and weighs every image's tokens, which a single token would not;
- "last": the last real token (CLIP-style EOS pooling).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.checkpoint import checkpoint

from mumu.config.model import ConnectorConfig
from mumu.io import atomic_path, write_json_atomic


class Connector(nn.Module):
    def __init__(self, cfg: ConnectorConfig, in_dim: int, out_dim: int, pooled_dim: int):
        super().__init__()
        self.cfg, self.in_dim, self.out_dim, self.pooled_dim = cfg, in_dim, out_dim, pooled_dim
        self.in_proj = nn.Linear(in_dim, cfg.width)
        layer = nn.TransformerEncoderLayer(
            cfg.width, cfg.heads, dim_feedforward=4 * cfg.width, dropout=cfg.dropout,
            activation="gelu", batch_first=True, norm_first=True,
        )
        # No nested-tensor fast path: it zeroes padded positions only in eval mode, and train/eval
        # outputs must agree.
        self.blocks = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.width)
        self.out_proj = nn.Linear(cfg.width, out_dim)
        self.pool_proj = nn.Linear(cfg.width, pooled_dim)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden [B, L, in_dim], attention_mask [B, L] (1 = real token) -> ([B, L, out_dim], [B, pooled_dim])."""
        mask = attention_mask.bool()
        # (Meta tensors hold no values: the full-size wiring check runs the connector on them, tests/test_full_size_wiring.py.)
        if mask.device.type != "meta" and not bool(mask.any(-1).all()):
            raise ValueError("every prompt needs at least one real token (the empty prompt keeps one)")
        x = self.in_proj(hidden.to(self.in_proj.weight.dtype))
        if self.cfg.gradient_checkpointing and self.training and torch.is_grad_enabled():
            # Layer by layer, as TransformerEncoder runs them when its fast paths are off (training, no nested
            # tensors). Non-reentrant: the checkpointed layer's input need not require grad (a frozen encoder).
            for layer in self.blocks.layers:
                x = checkpoint(layer, x, src_key_padding_mask=~mask, use_reentrant=False)
        else:
            x = self.blocks(x, src_key_padding_mask=~mask)
        x = self.norm(x)
        if self.cfg.pooling == "mean":
            w = mask.unsqueeze(-1).to(x.dtype)
            pooled = (x * w).sum(1) / w.sum(1)
        else:
            last = (mask.long() * torch.arange(mask.shape[1], device=mask.device)).argmax(-1)
            pooled = x[torch.arange(x.shape[0], device=x.device), last]
        return self.out_proj(x), self.pool_proj(pooled)

    # --- persistence: safetensors weights + json config ------------------------------------------------
    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / "connector.safetensors") as tmp:
            save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(tmp))
        write_json_atomic(directory / "connector.json", {
            "config": self.cfg.model_dump(mode="json"),
            "in_dim": self.in_dim, "out_dim": self.out_dim, "pooled_dim": self.pooled_dim,
        })

    @classmethod
    def load(cls, directory: str | Path) -> "Connector":
        directory = Path(directory)
        meta = json.loads((directory / "connector.json").read_text())
        conn = cls(ConnectorConfig.model_validate(meta["config"]), meta["in_dim"], meta["out_dim"], meta["pooled_dim"])
        conn.load_state_dict(load_file(str(directory / "connector.safetensors")))
        return conn
