"""Configuration: defaults, YAML loading with BASE includes, overrides, derived values."""
from configs.config import ConfigError, Derived, derive, dump_config, get_config, scale_lr, train_dir, \
    with_inputs_of, with_model_of
from configs.defaults import get_defaults

__all__ = ["ConfigError", "Derived", "derive", "dump_config", "get_config", "get_defaults", "scale_lr", "train_dir",
           "with_inputs_of", "with_model_of"]
