"""Errors a user can fix: the CLI prints their message on one line and exits non-zero, no traceback."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from typing import TypeVar

from pydantic import BaseModel, ValidationError

Config = TypeVar("Config", bound=BaseModel)


class UserError(Exception):
    """A mistake in what the user asked for (bad path, unknown name, invalid number)."""


def validated_config(config_class: type[Config], values: dict, label: str) -> Config:
    """A method's or attack's config from user values; the first invalid field becomes a one-line error, and so
    does a NaN or infinite number (which no range check catches: NaN compares false with everything)."""
    try:
        config = config_class(**values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise UserError(f"invalid {label} config: {where}: {first['msg']}") from exc
    for name, value in config.model_dump().items():
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"invalid {label} config: {name}: {value} is not a finite number")
    return config


def match_name(name: str, known: Iterable[str]) -> str | None:
    """`name` as spelled in `known`, matched without regard to case (`-c Star` is star, `-c zorblat` Zorblat)."""
    by_lower = {k.lower(): k for k in known}
    return by_lower.get(name.lower())


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """"; did you mean 'x'?" for the nearest of `known` to a misspelt `name`, or nothing when none is near."""
    by_lower = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return f"; did you mean '{by_lower[close[0]]}'?" if close else ""
