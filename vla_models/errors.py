"""Exceptions raised by vla_models. Each message says what was wrong, what was expected and what to do."""


class ConfigError(ValueError):
    """A configuration value is invalid (names the field, the allowed values and what was given)."""


class ObservationError(ValueError):
    """An observation or training batch does not match the policy's configuration."""


class CheckpointError(RuntimeError):
    """A checkpoint directory is missing, corrupt or does not match the model it is loaded into."""
