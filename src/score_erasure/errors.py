"""Errors a user can fix: the CLI prints their message on one line and exits non-zero, no traceback."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

Config = TypeVar("Config", bound=BaseModel)


class UserError(Exception):
    """A mistake in what the user asked for (bad path, unknown name, invalid number)."""


def validated_config(config_class: type[Config], values: dict, label: str) -> Config:
    """A method's or attack's config from user values; the first invalid field becomes a one-line error."""
    try:
        return config_class(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise UserError(f"invalid {label} config: {where}: {first['msg']}") from exc
