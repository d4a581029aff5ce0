"""The tiny profile trained on mumu.eval.prompt_following's toy task: the setup the learning tests share
(tests/trained_models.py trains each of their models once a session)."""

from pathlib import Path

import numpy as np

from mumu.config import load_profile
from mumu.eval.prompt_following import ToySubject, toy_iterate
from mumu.train.loop import train


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
    directory. Every step ran, with finite losses."""
    result = train("tune", profile, [], out, resume=False, iterate=toy_iterate(subjects, **stream))
    assert result.steps == profile.train.tune.max_steps and np.isfinite(result.losses).all()
    return result.model_dir
