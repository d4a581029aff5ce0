"""The connector's gradient checkpointing: the same outputs and gradients as without it (dropout included, under
one seed), each layer run again in backward, and less kept for backward."""

import pytest
import torch

from mumu.config.model import ConnectorConfig
from models.connector import Connector

IN_DIM, OUT_DIM, POOLED_DIM, LENGTH = 24, 32, 16, 12


def _pair(dropout: float) -> tuple[Connector, Connector]:
    cfg = ConnectorConfig(layers=3, heads=4, width=64, dropout=dropout)
    torch.manual_seed(0)
    plain = Connector(cfg, IN_DIM, OUT_DIM, POOLED_DIM).train()
    ckpt = Connector(cfg.model_copy(update={"gradient_checkpointing": True}), IN_DIM, OUT_DIM, POOLED_DIM).train()
    ckpt.load_state_dict(plain.state_dict())
    return plain, ckpt


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(3, LENGTH, IN_DIM, generator=g, requires_grad=True)
    mask = torch.ones(3, LENGTH, dtype=torch.long)
    mask[1, 7:] = 0  # a padded prompt: padding must stay masked in the recomputed layers too
    mask[2, 3:] = 0
    return hidden, mask


def _run(connector: Connector, seed: int = 2):
    """(outputs, gradients of every parameter and of the input, layer forward calls, bytes kept for backward)."""
    hidden, mask = _inputs()
    calls = []
    hooks = [layer.register_forward_pre_hook(lambda *_: calls.append(1)) for layer in connector.blocks.layers]
    kept = []

    def pack(t):
        kept.append(t.numel() * t.element_size())
        return t

    torch.manual_seed(seed)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        states, pooled = connector(hidden, mask)
    loss = states.square().mean() + pooled.square().mean()
    params = [p for p in connector.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params + [hidden])
    for h in hooks:
        h.remove()
    return (states.detach(), pooled.detach()), grads, len(calls), sum(kept)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_checkpointed_connector_matches_and_recomputes(dropout):
    plain, ckpt = _pair(dropout)
    (out_a, grads_a, calls_a, kept_a), (out_b, grads_b, calls_b, kept_b) = _run(plain), _run(ckpt)
    for a, b in zip(out_a, out_b):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert all(g.abs().sum() > 0 for g in grads_a)  # every weight and the input take a gradient
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    layers = plain.cfg.layers
    assert (calls_a, calls_b) == (layers, 2 * layers)  # each checkpointed layer runs again in backward
    # Without checkpointing every layer keeps its attention probabilities and MLP activations; with it, the
    # layers keep nothing through autograd's saved tensors (their inputs are held by the checkpoint).
    assert kept_b < kept_a / 4, (kept_a, kept_b)
    if dropout:
        other_seed = _run(ckpt, seed=3)[0][0]
        assert (other_seed - out_b[0]).abs().max() > 1e-3  # the dropout is live, and replayed the same


def test_checkpointing_is_off_outside_training():
    """In eval mode and under no_grad the connector runs TransformerEncoder as is: one call per layer."""
    _, ckpt = _pair(0.0)
    ckpt.eval()
    hidden, mask = _inputs()
    calls = []
    for layer in ckpt.blocks.layers:
        layer.register_forward_pre_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        ckpt(hidden, mask)
    assert len(calls) == ckpt.cfg.layers
