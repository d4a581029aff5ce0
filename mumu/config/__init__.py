"""Typed configuration. A *profile* (tiny, mumu-sdxl, or a YAML file) fills every section.

Profiles differ only in these values: the code path is the same for all of them.
"""

from mumu.config.base import ModelSource, StrictModel
from mumu.config.profile import ProfileConfig, config_hash, load_profile, resolve_profile

__all__ = ["ModelSource", "ProfileConfig", "StrictModel", "config_hash", "load_profile", "resolve_profile"]
