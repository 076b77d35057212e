"""ConfigError: a config field that cannot work, named in the message."""
from __future__ import annotations

from clip_jax.runtime.errors import RunError


class ConfigError(ValueError, RunError):
    """A config field that cannot work; the message starts with `config.<field>:`."""


def check(condition: bool, field: str, message: str) -> None:
    """Raises ConfigError("config.<field>: <message>") unless `condition` holds."""
    if not condition:
        raise ConfigError(f"config.{field}: {message}")
