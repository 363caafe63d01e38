"""Configuration: one settings table (``schema``), value kinds (``kinds``) and the loader
that merges defaults, a YAML file and the environment (``loader``)."""
from .loader import ConfigError, Settings, load_yaml_config, reset, settings

__all__ = ["ConfigError", "Settings", "load_yaml_config", "reset", "settings"]
