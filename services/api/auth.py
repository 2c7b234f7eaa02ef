"""API keys: a file of named keys, stored hashed, checked on every request but two.

The file (``FUM_API_KEYS``) holds one key a line, ``NAME sha256:HEX`` (the hex sha256 of
the key), with ``#`` comments; ``fum up --auth`` and ``fum key add`` write it. Keys are
random 256-bit tokens (``fum_`` + 43 url-safe characters), so one sha256 suffices to
store them: there is nothing to guess that a slow hash would protect. The api reads the
file at start and again whenever it changes, so a key added or removed takes effect
without a restart. With no file configured, the api is open, and says so when it starts.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import time
from pathlib import Path

import structlog

from services.common.errors import FumError, Unauthorized

log = structlog.get_logger()

PREFIX = "fum_"
KEY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_LINE = re.compile(r"(?P<name>\S+)\s+sha256:(?P<hash>[0-9a-f]{64})")
RELOAD_EVERY = 1.0  # seconds between looks at the file's mtime
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="fum"'}
INVALID = {"WWW-Authenticate": 'Bearer realm="fum", error="invalid_token"'}


def new_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_line(name: str, key: str) -> str:
    """The line of the keys file that stands for ``key`` under ``name``."""
    if not KEY_NAME.fullmatch(name):
        raise ValueError(f"invalid key name {name!r}: letters, digits, '_.@-', up to 64")
    return f"{name} sha256:{key_hash(key)}\n"


def parse_keys(text: str, source: str) -> dict[str, str]:
    """hash -> name, from the text of a keys file; ``ValueError`` naming a bad line."""
    keys: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _LINE.fullmatch(line)
        if match is None or not KEY_NAME.fullmatch(match["name"]):
            raise ValueError(f"{source}:{number}: expected 'NAME sha256:HEX', got {line[:40]!r}")
        keys[match["hash"]] = match["name"]
    return keys


def add_key(path: Path, name: str) -> str:
    """Make a key named ``name``, put it in the keys file (replacing a key of that name),
    and return it: the only time it is seen in clear."""
    key = new_key()
    lines = []
    if path.exists():
        for raw in path.read_text().splitlines(keepends=True):
            match = _LINE.fullmatch(raw.split("#", 1)[0].strip())
            if match is None or match["name"] != name:
                lines.append(raw if raw.endswith("\n") else raw + "\n")
    lines.append(key_line(name, key))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text("".join(lines))
    tmp.chmod(0o600)
    tmp.replace(path)
    return key


class ApiKeys:
    """The keys the api takes; ``None`` path: every request is let in."""

    def __init__(self, path: str) -> None:
        self.path = Path(path) if path else None
        self._keys: dict[str, str] = {}
        self._mtime: int | None = None
        self._looked = 0.0
        if self.path is not None:
            self._load()  # a missing or bad file stops the api at start, loudly

    @property
    def open(self) -> bool:
        return self.path is None

    def _load(self) -> None:
        assert self.path is not None
        try:
            stat = self.path.stat()
            self._keys = parse_keys(self.path.read_text(), str(self.path))
        except (OSError, ValueError) as exc:
            raise FumError(f"cannot read the API keys file: {exc}") from None
        self._mtime = stat.st_mtime_ns
        log.info("api.keys_loaded", path=str(self.path), keys=len(self._keys))

    def _refresh(self) -> None:
        """Read the file again if it changed; keep the keys in hand if it went bad."""
        now = time.monotonic()
        if self.path is None or now - self._looked < RELOAD_EVERY:
            return
        self._looked = now
        try:
            changed = self.path.stat().st_mtime_ns != self._mtime
        except OSError:
            changed = True
        if changed:
            try:
                self._load()
            except FumError as exc:
                log.error("api.keys_unreadable", error=exc.message)

    def caller(self, authorization: str | None) -> str | None:
        """The name of the key an ``Authorization`` header carries, or ``Unauthorized``;
        None when the api is open."""
        if self.path is None:
            return None
        self._refresh()
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("send an API key: Authorization: Bearer KEY", CHALLENGE)
        # A lookup by the key's hash: what it could leak by its timing is of the hash.
        name = self._keys.get(key_hash(token.strip()))
        if name is None:
            raise Unauthorized("the API key is not known", INVALID)
        return name
