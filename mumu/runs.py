"""Where a stage's outputs live inside its run folder."""

from __future__ import annotations

from pathlib import Path

from mumu.errors import UserError


def model_dir(run_or_model: str | Path) -> Path:
    """A training run folder (its model is RUN/model) or a saved model folder itself."""
    path = Path(run_or_model)
    for candidate in (path / "model", path):
        if (candidate / "mumu_config.json").is_file():
            return candidate
    raise UserError(f"{run_or_model}: no saved model (expected RUN/model/mumu_config.json from a training stage)")
