"""The tiny profile trained on mumu.eval.prompt_following's toy task: the setup the learning tests share
(tests/trained_models.py trains each of their models once a session)."""

import dataclasses
from pathlib import Path

import numpy as np
import torch

from models.cached import CachedFeatures
from models.decoder import build_vae, vae_posterior
from models.mumu_model import target_pixels
from mumu.config import load_profile
from mumu.eval.prompt_following import ToySubject, toy_iterate
from mumu.train.loop import train

# Distinct targets whose posteriors are kept: the unseen-subjects stream has 374 subjects x 7 backgrounds (a
# posterior of the tiny VAE is 2 KB), and a stream that places subjects at random has no end.
MAX_MEMO = 4096


def toy_profile(steps: int, **overrides):
    """tiny, tuning `steps` steps of batch 8 on one torch thread with one checkpoint at the end, no preview grids
    and (unless overridden) no attention-mask loss. One thread: the figures do not depend on how many threads
    the machine gives (float sums split across threads round differently), and `make test` runs the learning tests
    beside the rest of the suite, one core each."""
    return load_profile("tiny", {
        "runtime.train_torch_threads": 1, "train.tune.batch_size": 8, "train.tune.max_steps": steps, "train.tune.warmup_steps": 10,
        "train.tune.checkpoint_every": steps, "train.tune.sample_every": 0, "train.tune.attn_loss.weight": 0.0,
        **overrides,
    })


def train_on_toy(profile, subjects: list[ToySubject], out: Path, **stream) -> Path:
    """Train the tune stage from scratch on the toy stream (toy_iterate's options in `stream`); the model's
    directory."""
    return train_on_stream(profile, toy_iterate(subjects, **stream), out)


def train_on_stream(profile, iterate, out: Path) -> Path:
    """Train the tune stage from scratch on a stream of batches (an `iterate` for mumu.train.loop.train); the
    model's directory. Every step ran, with finite losses."""
    iterate = with_target_posteriors(iterate, profile.model.decoder)
    result = train("tune", profile, [], out, resume=False, iterate=iterate)
    assert result.steps == profile.train.tune.max_steps and np.isfinite(result.losses).all()
    return result.model_dir


def with_target_posteriors(iterate, decoder_cfg):
    """The toy stream with each target's VAE posterior attached, as the feature cache attaches it to real samples
    (models/cached.py): the toy task draws the same few targets again and again, and the frozen VAE's encode was a
    fifth of a step. The step draws its latent sample from the posterior either way, so the model trains the same."""
    vae = build_vae(decoder_cfg).eval().requires_grad_(False)
    memo: dict[tuple, torch.Tensor] = {}

    def posteriors(images) -> list[torch.Tensor]:
        keys = [(im.size, im.mode, im.tobytes()) for im in images]
        missing, computed = {k: im for k, im in zip(keys, images) if k not in memo}, {}
        if missing:
            pixels = torch.stack([target_pixels(im, decoder_cfg.resolution)[0] for im in missing.values()])
            computed = dict(zip(missing, vae_posterior(vae, pixels)))
            if len(memo) + len(computed) <= MAX_MEMO:
                memo.update(computed)
        return [memo[k] if k in memo else computed[k] for k in keys]

    def iterate_with_posteriors(*args, **kwargs):
        for batch in iterate(*args, **kwargs):
            yield [dataclasses.replace(ex, features=CachedFeatures(posterior=p))
                   for ex, p in zip(batch, posteriors([ex.image for ex in batch]))]
    return iterate_with_posteriors
