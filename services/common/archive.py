"""Function packages: tar.gz or zip, recognised by their bytes, unpacked safely."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from services.common.errors import BadRequest


def package_kind(data: bytes) -> str:
    """``tar.gz``, ``tar`` or ``zip`` from the magic bytes; the filename is not trusted."""
    if data[:2] == b"\x1f\x8b":
        return "tar.gz"
    if data[:4] == b"PK\x03\x04" or data[:4] == b"PK\x05\x06":
        return "zip"
    if len(data) > 262 and data[257:262] == b"ustar":
        return "tar"
    raise BadRequest("the package is neither a tar.gz nor a zip archive")


def _check_member(name: str) -> None:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise BadRequest(f"the package has an unsafe path: {name!r}")


def validate_package(data: bytes) -> list[str]:
    """Read the whole archive (so a corrupt one fails here) and return its file names."""
    kind = package_kind(data)
    try:
        if kind == "zip":
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                bad = archive.testzip()
                if bad is not None:
                    raise BadRequest(f"the package is corrupt at {bad!r}")
                names = archive.namelist()
        else:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
                names = []
                for member in archive:
                    if member.isfile():
                        extracted = archive.extractfile(member)
                        assert extracted is not None
                        extracted.read()
                    names.append(member.name)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise BadRequest(f"the package is not a valid {kind}: {exc}") from None
    for name in names:
        _check_member(name)
    if not names:
        raise BadRequest("the package is empty")
    return names


def extract_package(package: Path, dest: Path) -> None:
    """Unpack a package validated before into ``dest``."""
    data = package.read_bytes()
    if package_kind(data) == "zip":
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for name in archive.namelist():
                _check_member(name)
            archive.extractall(dest)
    else:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
            archive.extractall(dest, filter="data")
