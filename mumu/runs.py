"""Where a stage's outputs live inside its run folder, and the resolved config every run folder holds."""

from __future__ import annotations

from pathlib import Path

import yaml

from mumu.errors import UserError
from mumu.io import write_text_atomic

CONFIG_FILE = "config.yaml"


def profile_yaml(cfg) -> str:
    """A resolved profile (ProfileConfig, overrides applied, defaults filled in) as YAML that
    `--profile FILE.yaml` loads back to the same config."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True, width=120)


def write_run_config(out: str | Path, cfg) -> Path:
    """OUT/config.yaml (atomic): the config this run used, so a run folder explains itself."""
    path = Path(out) / CONFIG_FILE
    write_text_atomic(path, profile_yaml(cfg))
    return path


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
