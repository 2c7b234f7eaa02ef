"""Function packages: a folder packed into a reproducible tar.gz in memory, or an archive as is."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

from .errors import FumError

# Never part of a function: caches, version control, virtualenvs, editor litter.
SKIP_DIRS = frozenset(
    {
        "__pycache__",
        ".git",
        ".hg",
        ".svn",
        ".venv",
        "venv",
        ".mypy_cache",
        ".pytest_cache",
        ".ruff_cache",
        ".tox",
        "node_modules",
    }
)
SKIP_FILES = frozenset({".DS_Store"})
SKIP_SUFFIXES = (".pyc", ".pyo")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip", ".tar")


class PackageError(FumError):
    """The folder or archive cannot be made into a package."""


def package_files(folder: Path) -> list[Path]:
    """The files to pack, sorted: everything but caches and archives at the top level."""
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS)
        here = Path(root)
        for name in sorted(names):
            path = here / name
            if name in SKIP_FILES or name.endswith(SKIP_SUFFIXES) or not path.is_file():
                continue
            if here == folder and name.endswith(ARCHIVE_SUFFIXES):
                continue  # a packed copy beside the code is a build output, not code
            files.append(path)
    return files


def pack_files(files: dict[str, bytes], executable: frozenset[str] = frozenset()) -> bytes:
    """A tar.gz of ``{name: bytes}`` at the archive's root: sorted, mtime 0, owner 0.

    The same files always give the same bytes, so the api stores one package for them.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            data = files[name]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o755 if name in executable else 0o644
            tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz:
        gz.write(buffer.getvalue())
    return out.getvalue()


def pack_folder(folder: str | os.PathLike[str]) -> bytes:
    """The folder's files packed at the archive's root (see ``pack_files``)."""
    root = Path(folder)
    if not root.is_dir():
        raise PackageError(f"{root} is not a folder")
    files, executable = {}, set()
    for path in package_files(root):
        name = path.relative_to(root).as_posix()
        try:
            files[name] = path.read_bytes()
        except OSError as exc:
            raise PackageError(f"cannot read {path}: {exc.strerror}") from None
        if path.stat().st_mode & 0o111:
            executable.add(name)
    if not files:
        raise PackageError(f"{root} has no files to pack")
    return pack_files(files, frozenset(executable))


def load_package(source: str | os.PathLike[str]) -> tuple[bytes, str]:
    """(package bytes, filename) of a folder (packed) or of a .tar.gz/.zip file (as is)."""
    path = Path(source)
    if path.is_dir():
        return pack_folder(path), f"{path.resolve().name or 'function'}.tar.gz"
    if path.is_file():
        if not path.name.endswith(ARCHIVE_SUFFIXES):
            raise PackageError(f"{path} is neither a folder nor a .tar.gz or .zip package")
        try:
            return path.read_bytes(), path.name
        except OSError as exc:
            raise PackageError(f"cannot read {path}: {exc.strerror}") from None
    raise PackageError(f"{path} does not exist")
