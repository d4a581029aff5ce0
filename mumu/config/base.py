"""Shared building blocks of every config section."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# torch.manual_seed and numpy's SeedSequence take non-negative seeds below 2**64; one bound for every seed.
SEED_MAX = 2**63 - 1

BUNDLED_PREFIX = "bundled:"
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "resources"


class StrictModel(BaseModel):
    """A config section: unknown keys are errors (a typo must not silently fall back to a default).

    Every number carries its bounds (`Field(ge=..., le=...)`), so a bad value fails when the profile is
    loaded, naming the field, instead of deep inside a run; NaN and infinity are never valid.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=(), allow_inf_nan=False)


class ModelSource(StrictModel):
    """Where a model's weights come from.

    Exactly one of:
    - `pretrained`: a hub id or a local directory, loaded with the library's `from_pretrained`
      (offline under HF_HUB_OFFLINE=1: the files must already be in the cache or the directory);
    - `config`: keyword overrides for the model's config class; the model is built from it with
      weights initialised under `seed` (the tiny profile, and tests).
    """

    pretrained: str | None = None
    revision: str | None = None
    subfolder: str | None = None  # e.g. "unet" inside an SDXL repository
    config: dict[str, Any] | None = None
    seed: int = Field(0, ge=0, le=SEED_MAX)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # models/hf.py torch_dtype

    @model_validator(mode="after")
    def _one_source(self) -> "ModelSource":
        if (self.pretrained is None) == (self.config is None):
            raise ValueError("give exactly one of `pretrained` (hub id or directory) or `config` (build from config)")
        return self

    @property
    def is_pretrained(self) -> bool:
        return self.pretrained is not None

    @property
    def location(self) -> str | None:
        """What `from_pretrained` is given: `pretrained`, with `bundled:NAME` read as the folder NAME of the
        weights the package ships (mumu/resources/NAME), wherever the package is installed. The config keeps
        the portable name, so hashes and saved models do not depend on the install path."""
        if self.pretrained is not None and self.pretrained.startswith(BUNDLED_PREFIX):
            return str(BUNDLED_DIR / self.pretrained[len(BUNDLED_PREFIX):])
        return self.pretrained
