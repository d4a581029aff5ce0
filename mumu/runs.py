"""Where a stage's outputs live inside its run folder."""

from __future__ import annotations

from pathlib import Path

from mumu.errors import UserError


def model_dir(run_or_model: str | Path) -> Path:
    """A training run dir (its `model/`) or a saved model dir (holds mumu_config.json) -> the model dir."""
    p = Path(run_or_model).expanduser()
    if not p.exists():
        raise UserError(f"checkpoint {p} does not exist")
    if (p / "model" / "mumu_config.json").is_file():
        return p / "model"
    if (p / "mumu_config.json").is_file():
        return p
    if (p / "checkpoints").is_dir():
        raise UserError(f"{p} is a training run without a final model/ (training has not finished): "
                        "resume the training run or pass a saved model directory")
    raise UserError(f"{p} is neither a training run directory nor a saved model (no mumu_config.json)")
