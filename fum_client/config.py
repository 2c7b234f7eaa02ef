"""Where the cluster is and which API key to send: one resolution for the CLI and the SDK.

Each setting is taken from the first of: the explicit argument (``--api-url`` on the
CLI, ``api_url=`` in the SDK), the environment (``FUM_API_URL``, ``FUM_API_KEY``), the
profile file, and the default (``http://127.0.0.1:3000``, no key).

The profile file is ``$FUM_CONFIG``, else ``$XDG_CONFIG_HOME/fum/config.toml``, else
``~/.config/fum/config.toml``. It holds one table per profile; the profile is the
explicit one (``--profile``, ``profile=``), else ``$FUM_PROFILE``, else ``default``::

    [default]
    api_url = "http://127.0.0.1:3000"

    [staging]
    api_url = "https://fum.example.org"
    api_key = "..."
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError

DEFAULT_API_URL = "http://127.0.0.1:3000"
DEFAULT_PROFILE = "default"
KEYS = ("api_url", "api_key")


@dataclass(frozen=True)
class Settings:
    """The resolved address and key, and where each came from (for ``fum config show``)."""

    api_url: str
    api_key: str | None
    profile: str
    config_file: Path
    sources: Mapping[str, str]  # setting -> "argument", "environment", "profile", "default"


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    """The profile file's path (it need not exist)."""
    env = os.environ if environ is None else environ
    if env.get("FUM_CONFIG"):
        return Path(env["FUM_CONFIG"]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "fum" / "config.toml"


def read_profiles(path: Path) -> dict[str, dict[str, Any]]:
    """Every profile table of the file ({} when there is no file)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read the profile file {path}: {exc}") from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the profile file {path} is not valid TOML: {exc}") from None
    profiles = {}
    for name, table in document.items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: '{name}' must be a table ([{name}]) of settings")
        unknown = set(table) - set(KEYS)
        if unknown:
            raise ConfigError(f"{path}: [{name}] has unknown settings {sorted(unknown)}")
        for key, value in table.items():
            if not isinstance(value, str):
                raise ConfigError(f"{path}: [{name}] {key} must be a string")
        profiles[name] = table
    return profiles


def check_url(url: str) -> str:
    """The URL without a trailing slash, or ConfigError if it is not http(s)://host[:port]."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"the api URL must look like http://host:port, not {url!r}")
    try:
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        raise ConfigError(f"the api URL has a bad port: {url!r}") from None
    return url.rstrip("/")


def resolve(
    api_url: str | None = None,
    api_key: str | None = None,
    profile: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve the address and the key: argument, environment, profile file, default."""
    env = os.environ if environ is None else environ
    path = config_path(env)
    chosen = profile or env.get("FUM_PROFILE") or DEFAULT_PROFILE
    profiles = read_profiles(path)
    if (profile or env.get("FUM_PROFILE")) and chosen not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        raise ConfigError(f"no profile {chosen!r} in {path} (profiles: {known})")
    table = profiles.get(chosen, {})
    values: dict[str, str | None] = {}
    sources: dict[str, str] = {}
    explicit = {"api_url": api_url, "api_key": api_key}
    for key in KEYS:
        env_value = env.get(f"FUM_{key.upper()}")
        if explicit[key]:
            values[key], sources[key] = explicit[key], "argument"
        elif env_value:
            values[key], sources[key] = env_value, "environment"
        elif table.get(key):
            values[key], sources[key] = table[key], f"profile [{chosen}]"
        else:
            values[key] = DEFAULT_API_URL if key == "api_url" else None
            sources[key] = "default"
    url = values["api_url"]
    assert url is not None
    return Settings(check_url(url), values["api_key"], chosen, path, sources)


def write_setting(path: Path, profile: str, key: str, value: str | None) -> None:
    """Set (or, with ``None``, remove) one setting of one profile in the profile file."""
    if key not in KEYS:
        raise ConfigError(f"unknown setting {key!r} (settings: {', '.join(KEYS)})")
    if key == "api_url" and value is not None:
        value = check_url(value)
    profiles = read_profiles(path)
    table = profiles.setdefault(profile, {})
    if value is None:
        table.pop(key, None)
    else:
        table[key] = value
    lines = []
    for name, settings in profiles.items():
        if not settings:
            continue
        lines.append(f"[{_toml_key(name)}]")
        lines.extend(f"{k} = {_toml_string(v)}" for k, v in settings.items())
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.chmod(0o600)  # it may hold an API key
    tmp.replace(path)


def _toml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _toml_key(name: str) -> str:
    bare = name.replace("-", "").replace("_", "").isalnum()
    return name if bare else _toml_string(name)
