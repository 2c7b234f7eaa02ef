"""Settings read once from ``FUM_*`` environment variables into frozen Structs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TypeVar

import msgspec

S = TypeVar("S", bound=msgspec.Struct)


def load_settings(cls: type[S], environ: Mapping[str, str] | None = None) -> S:
    """Build ``cls`` from the environment: field ``db_url`` comes from ``FUM_DB_URL``.

    Values are strings in the environment; msgspec converts them to the field's type and
    a bad value fails at start-up with the variable's name in the message.
    """
    environ = os.environ if environ is None else environ
    values = {}
    for field in msgspec.structs.fields(cls):
        name = f"FUM_{field.name.upper()}"
        if name in environ:
            values[field.name] = environ[name]
    try:
        return msgspec.convert(values, cls, strict=False)
    except msgspec.ValidationError as exc:
        raise SystemExit(f"bad setting: {exc} (from FUM_* environment variables)") from None


def settings_env(settings: msgspec.Struct) -> dict[str, str]:
    """The inverse of ``load_settings``: environment variables that reproduce ``settings``."""
    env = {}
    for field in msgspec.structs.fields(type(settings)):
        value = getattr(settings, field.name)
        if value is None:
            continue
        env[f"FUM_{field.name.upper()}"] = str(value)
    return env
