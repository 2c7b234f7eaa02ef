"""Function packages: tar.gz or zip, recognised by their bytes, read within bounds.

A package comes from a client and is not trusted. It is read as a stream of members,
each in chunks, never whole in memory, and refused (``BadRequest``, nothing kept) as soon
as it breaks a bound of ``PackageLimits``: more unpacked bytes or members than allowed,
a path that is absolute, climbs out (``..``), is too deep or too long, or a member that
is not a plain file or folder (symlinks, hard links, devices, fifos). The api reads
every member this way before it stores a package, and a worker reads it the same way
again when it unpacks it (the api may be older, or the file changed on disk): one
reader, ``members``, serves both.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, NamedTuple

import msgspec

from services.common.errors import BadRequest

CHUNK = 1 << 16


class PackageLimits(msgspec.Struct, frozen=True, kw_only=True):
    """Bounds on what a package may unpack to. The settings of every service that reads
    packages (api, worker, miniworker) extend this, so each bound is one ``FUM_*``
    setting of the same name (``FUM_MAX_UNPACKED_MB``, ...; docs/SECURITY.md)."""

    max_unpacked_mb: int = 512  # all members' bytes together, unpacked
    max_files: int = 10_000  # members, files and folders
    max_depth: int = 32  # folders in a member's path
    max_path: int = 1024  # characters of a member's path


def limits_of(settings: PackageLimits) -> dict[str, int]:
    """The package limits of some settings, as keyword arguments for other settings."""
    return {name: getattr(settings, name) for name in PackageLimits.__struct_fields__}


def package_kind(head: bytes) -> str:
    """``tar.gz``, ``tar`` or ``zip`` from the magic bytes; the filename is not trusted."""
    if head[:2] == b"\x1f\x8b":
        return "tar.gz"
    if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
        return "zip"
    if len(head) > 262 and head[257:262] == b"ustar":
        return "tar"
    raise BadRequest("the package is neither a tar.gz nor a zip archive")


def file_kind(path: Path) -> str:
    with path.open("rb") as f:
        return package_kind(f.read(512))


class Member(NamedTuple):
    """One member: its safe relative path, whether it is a folder, and (for a file) a
    reader of its bytes, to be read before the next member is asked for."""

    path: PurePosixPath
    is_dir: bool
    reader: _Reader | None
    mode: int
    size: int = 0  # of a file, as its header declares it (its reader gives no more)
    mtime: float = 0.0  # as the archive says (kept: a .pyc is valid for its source's)


class _Budget:
    """What a package has used of its limits so far."""

    def __init__(self, limits: PackageLimits) -> None:
        self.limits = limits
        self.files = 0
        self.bytes = 0
        self.seen: dict[PurePosixPath, bool] = {}  # path -> is a folder

    def member(self, name: str, is_dir: bool, size: int) -> PurePosixPath:
        """Check one member by its header, before any of its bytes are read: an archive
        member's reader gives no more than the size its header declares (tarfile stops
        there; zipfile checks the size and CRC as it reads), so charging the declared
        size refuses a bomb before it is inflated."""
        limits = self.limits
        self.files += 1
        self.add_bytes(size)
        if self.files > limits.max_files:
            raise BadRequest(f"the package has more than {limits.max_files} members")
        if len(name) > limits.max_path or "\x00" in name:
            raise BadRequest(f"the package has a path longer than {limits.max_path}: {name[:80]!r}")
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts or "\\" in name:
            raise BadRequest(f"the package has an unsafe path: {name!r}")
        parts = [p for p in path.parts if p != "."]
        if not parts:
            if is_dir:
                return PurePosixPath(".")
            raise BadRequest(f"the package has a file with no name: {name!r}")
        if len(parts) > limits.max_depth:
            raise BadRequest(f"the package has a path deeper than {limits.max_depth}: {name!r}")
        path = PurePosixPath(*parts)
        # A file where a folder is (or the other way round) would fail on unpacking.
        for parent in path.parents:
            if self.seen.get(parent) is False:
                raise BadRequest(f"the package has {name!r} inside the file {str(parent)!r}")
            self.seen.setdefault(parent, True)
        if self.seen.get(path, is_dir) != is_dir:
            raise BadRequest(f"the package has {name!r} as both a file and a folder")
        self.seen[path] = is_dir
        return path

    def add_bytes(self, count: int) -> None:
        self.bytes += count
        if self.bytes > self.limits.max_unpacked_mb * 1024 * 1024:
            raise BadRequest(f"the package unpacks to more than {self.limits.max_unpacked_mb} MiB")


_BROKEN = (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError)


class _Reader:
    """A member's bytes; a corrupt archive found while reading them is a ``BadRequest``."""

    def __init__(self, raw: IO[bytes], kind: str) -> None:
        self._raw = raw
        self._kind = kind

    def read(self, size: int = CHUNK) -> bytes:
        try:
            return self._raw.read(size)
        except _BROKEN as exc:
            raise BadRequest(f"the package is not a valid {self._kind}: {exc}") from None


def members(package: Path, limits: PackageLimits) -> Iterator[Member]:
    """The package's members in order, each checked against ``limits`` before it is
    given; ``BadRequest`` for a corrupt archive or one that breaks a limit."""
    kind = file_kind(package)
    budget = _Budget(limits)
    try:
        if kind == "zip":
            yield from _zip_members(package, budget)
        else:
            yield from _tar_members(package, budget)
    except _BROKEN as exc:
        raise BadRequest(f"the package is not a valid {kind}: {exc}") from None
    if budget.files == 0:
        raise BadRequest("the package is empty")


def _tar_members(package: Path, budget: _Budget) -> Iterator[Member]:
    with tarfile.open(package, mode="r:*") as archive:
        for info in archive:
            if not (info.isfile() or info.isdir()):
                kind = "a link" if info.issym() or info.islnk() else "not a plain file"
                raise BadRequest(f"the package member {info.name!r} is {kind}")
            path = budget.member(info.name, info.isdir(), info.size)
            raw = archive.extractfile(info) if info.isfile() else None
            reader = _Reader(raw, "tar") if raw else None
            yield Member(path, info.isdir(), reader, info.mode, info.size, info.mtime)


def _zip_members(package: Path, budget: _Budget) -> Iterator[Member]:
    with zipfile.ZipFile(package) as archive:
        for info in archive.infolist():
            mode = info.external_attr >> 16  # unix mode, when a unix zip wrote one
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise BadRequest(f"the package member {info.filename!r} is not a plain file")
            path = budget.member(info.filename, info.is_dir(), info.file_size)
            if info.is_dir():
                yield Member(path, True, None, 0o755)
                continue
            # ZipExtFile checks the CRC and the declared size as it reads to the end.
            with archive.open(info) as raw:
                mtime = time.mktime((*info.date_time, 0, 0, -1))
                yield Member(path, False, _Reader(raw, "zip"), mode or 0o644, info.file_size, mtime)


def validate_package(package: Path, limits: PackageLimits) -> list[str]:
    """Read every member of the package to its end within ``limits`` (so a corrupt or
    hostile one fails here, before it is stored); its members' paths."""
    names = []
    for member in members(package, limits):
        if member.reader is not None:
            while member.reader.read(CHUNK):
                pass
        names.append(str(member.path))
    return names


def extract_package(package: Path, dest: Path, limits: PackageLimits) -> None:
    """Unpack the package into ``dest`` within ``limits``, plain files and folders only,
    nothing outside ``dest``; on a bad package, ``BadRequest`` and ``dest`` is emptied."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        for member in members(package, limits):
            target = dest / member.path
            if member.is_dir:
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            assert member.reader is not None
            with target.open("wb") as out:
                while chunk := member.reader.read(CHUNK):
                    out.write(chunk)
            target.chmod(0o755 if member.mode & 0o111 else 0o644)
            if member.mtime > 0:
                os.utime(target, (member.mtime, member.mtime))
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True, exist_ok=True)
        raise


def package_as_tar(package: Path, prefix: str, out: IO[bytes], limits: PackageLimits) -> None:
    """Write the package's members as a plain tar under ``prefix`` (for a container's
    put_archive), within ``limits``, a chunk at a time."""
    root = PurePosixPath(prefix.lstrip("/") or ".")
    with tarfile.open(fileobj=out, mode="w") as dest:
        for member in members(package, limits):
            info = tarfile.TarInfo(str(root / member.path))
            info.uid = info.gid = 0
            if member.is_dir:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                dest.addfile(info)
                continue
            assert member.reader is not None
            # The declared size: the reader gives no more, and a shorter member (a corrupt
            # archive) fails tarfile's copy. Packages were read through when they were
            # stored, and are checked against their sha256 on every node.
            info.size, info.mtime = member.size, member.mtime
            info.mode = 0o755 if member.mode & 0o111 else 0o644
            try:
                dest.addfile(info, member.reader)
            except OSError as exc:
                raise BadRequest(f"the package member {str(member.path)!r}: {exc}") from None


def _add_file(dest: tarfile.TarFile, name: str, source: IO[bytes], mode: int, mtime: float) -> None:
    """Add one plain file, read from ``source`` (sized by spooling it)."""
    with tempfile.TemporaryFile() as spool:
        shutil.copyfileobj(source, spool, CHUNK)
        info = tarfile.TarInfo(name)
        info.size, info.mtime = spool.tell(), mtime
        info.mode = 0o755 if mode & 0o111 else 0o644
        spool.seek(0)
        dest.addfile(info, spool)


def _add_dir(dest: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    dest.addfile(info)


def archive_folder(folder: Path, artifact: Path) -> None:
    """Write what ``folder`` holds as a tar.gz of plain files and folders, named relative
    to it (a build's artifact, unpacked like a package). A link is kept as the file it
    names when that is a file inside ``folder``, else left out: what a build leaves is
    not trusted, and nothing outside its folder may leave with it."""
    root = folder.resolve()
    with tarfile.open(artifact, mode="w:gz") as dest:
        for here, dirs, files in os.walk(root):
            base = Path(here)
            for name in sorted(dirs):
                if not (base / name).is_symlink():
                    _add_dir(dest, str((base / name).relative_to(root)))
            dirs[:] = [d for d in sorted(dirs) if not (base / d).is_symlink()]
            for name in sorted(files):
                path = base / name
                target = path.resolve()
                if not target.is_file() or not target.is_relative_to(root):
                    continue
                found = target.stat()
                with target.open("rb") as source:
                    name = str(path.relative_to(root))
                    _add_file(dest, name, source, found.st_mode, found.st_mtime)


def rebase_tar(archive: tarfile.TarFile, artifact: Path) -> None:
    """Write a container's tar of one folder (``GET /containers/{id}/archive``: members
    under the folder's own name) as a tar.gz of its contents, plain files and folders
    only; a link is kept as the file it names within the archive, else left out."""
    with tarfile.open(artifact, mode="w:gz") as dest:
        for info in archive:
            _, _, name = info.name.partition("/")
            if not name:
                continue
            if info.isdir():
                _add_dir(dest, name)
                continue
            try:
                source = archive.extractfile(info) if (info.isfile() or info.issym()) else None
            except KeyError:  # a link to nothing in the archive
                source = None
            if source is not None:
                with source:
                    _add_file(dest, name, source, info.mode, info.mtime)
