"""Typed configuration: the model, the units it accepts, and the one loader."""

from aeterna_shared.config.loader import ConfigError, env_name, load_config
from aeterna_shared.config.model import AeternaConfig

__all__ = ["AeternaConfig", "ConfigError", "env_name", "load_config"]
