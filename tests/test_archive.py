"""The package reader: what the api validates and a worker unpacks, within the limits."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from services.common.archive import (
    PackageLimits,
    extract_package,
    package_as_tar,
    validate_package,
)
from services.common.errors import BadRequest

LIMITS = PackageLimits()


class Zeros(io.RawIOBase):
    """``size`` zero bytes, made as they are read (a bomb needs no memory to build)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray) -> int:  # type: ignore[override]
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def tar_gz(
    path: Path, members: list[tarfile.TarInfo], data: dict[str, bytes] | None = None
) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info in members:
            body = (data or {}).get(info.name)
            if body is not None:
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
            else:
                tar.addfile(info)
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def bomb(path: Path, size: int) -> Path:
    """A tar.gz of one file of ``size`` zeros (1 GiB packs to about 1 MiB)."""
    with tarfile.open(path, "w:gz", compresslevel=9) as tar:
        info = tarfile.TarInfo("zeros.bin")
        info.size = size
        tar.addfile(info, Zeros(size))
    return path


def test_good_packages_unpack_whole(tmp_path: Path) -> None:
    pkg = tar_gz(
        tmp_path / "ok.tar.gz",
        [member("main.py"), member("lib", tarfile.DIRTYPE), member("lib/util.py")],
        {"main.py": b"print(1)\n", "lib/util.py": b"X = 2\n"},
    )
    assert validate_package(pkg, LIMITS) == ["main.py", "lib", "lib/util.py"]
    extract_package(pkg, tmp_path / "out", LIMITS)
    assert (tmp_path / "out" / "lib" / "util.py").read_text() == "X = 2\n"
    zpath = tmp_path / "ok.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        z.writestr("main.py", "print(2)\n")
        z.writestr("pkg/", "")
    assert validate_package(zpath, LIMITS) == ["main.py", "pkg"]
    with (tmp_path / "out.tar").open("wb") as out:
        package_as_tar(zpath, "/ws", out, LIMITS)
    with tarfile.open(tmp_path / "out.tar") as tar:
        assert sorted(tar.getnames()) == ["ws/main.py", "ws/pkg"]
        assert tar.extractfile("ws/main.py").read() == b"print(2)\n"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("info", "why"),
    [
        (member("escape", tarfile.SYMTYPE, "../../etc/passwd"), "link"),
        (member("inside", tarfile.SYMTYPE, "main.py"), "link"),
        (member("hard", tarfile.LNKTYPE, "/etc/passwd"), "link"),
        (member("dev", tarfile.CHRTYPE), "not a plain file"),
        (member("blk", tarfile.BLKTYPE), "not a plain file"),
        (member("fifo", tarfile.FIFOTYPE), "not a plain file"),
        (member("../evil.py"), "unsafe path"),
        (member("/etc/cron.d/evil"), "unsafe path"),
        (member("a/../../evil.py"), "unsafe path"),
        (member("/".join(["d"] * 40) + "/f.py"), "deeper"),
        (member("x" * 2000), "longer"),
    ],
)
def test_hostile_tar_members_are_refused_and_nothing_is_written(
    tmp_path: Path, info: tarfile.TarInfo, why: str
) -> None:
    pkg = tar_gz(tmp_path / "bad.tar.gz", [member("main.py"), info], {"main.py": b"1"})
    with pytest.raises(BadRequest, match=why):
        validate_package(pkg, LIMITS)
    out = tmp_path / "out"
    with pytest.raises(BadRequest, match=why):
        extract_package(pkg, out, LIMITS)
    assert list(out.iterdir()) == []  # what came before the bad member is gone too
    assert not (tmp_path / "evil.py").exists()


def test_hostile_zip_members_are_refused(tmp_path: Path) -> None:
    for name, mode in [
        ("link", stat.S_IFLNK | 0o777),
        ("fifo", stat.S_IFIFO | 0o644),
    ]:
        zpath = tmp_path / f"{name}.zip"
        with zipfile.ZipFile(zpath, "w") as z:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            z.writestr(info, "/etc/passwd")
        with pytest.raises(BadRequest, match="not a plain file"):
            validate_package(zpath, LIMITS)
    for name in ("../slip.py", "/abs.py", "a\\..\\..\\b.py"):
        zpath = tmp_path / "slip.zip"
        with zipfile.ZipFile(zpath, "w") as z:
            z.writestr(zipfile.ZipInfo(name), "x")
        with pytest.raises(BadRequest, match="unsafe path"):
            extract_package(zpath, tmp_path / "zout", LIMITS)
        assert not (tmp_path / "slip.py").exists()


def test_a_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    pkg = bomb(tmp_path / "bomb.tar.gz", 1 << 30)
    assert pkg.stat().st_size < 2 << 20  # a small upload
    with pytest.raises(BadRequest, match="more than 512 MiB"):
        validate_package(pkg, LIMITS)


def test_limits_bound_members_and_bytes(tmp_path: Path) -> None:
    small = PackageLimits(max_unpacked_mb=1, max_files=3)
    many = tar_gz(
        tmp_path / "many.tar.gz",
        [member(f"f{i}.py") for i in range(4)],
        {f"f{i}.py": b"" for i in range(4)},
    )
    with pytest.raises(BadRequest, match="more than 3 members"):
        validate_package(many, small)
    big = bomb(tmp_path / "big.tar.gz", 2 << 20)
    with pytest.raises(BadRequest, match="more than 1 MiB"):
        extract_package(big, tmp_path / "out", small)
    validate_package(big, LIMITS)  # within the default limits


def test_a_zip_that_lies_about_its_size_is_refused(tmp_path: Path) -> None:
    zpath = tmp_path / "liar.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("big.bin", bytes(5 << 20))
    raw = bytearray(zpath.read_bytes())
    # the declared size (local header and central directory) says 10 bytes
    for offset in (18 + 4, raw.rfind(b"PK\x01\x02") + 24):
        raw[offset : offset + 4] = (10).to_bytes(4, "little")
    zpath.write_bytes(bytes(raw))
    with pytest.raises(BadRequest):
        extract_package(zpath, tmp_path / "out", LIMITS)
    assert not any((tmp_path / "out").iterdir())


def test_conflicting_paths_are_refused(tmp_path: Path) -> None:
    pkg = tar_gz(tmp_path / "clash.tar.gz", [member("a"), member("a/b")], {"a": b"1", "a/b": b"2"})
    with pytest.raises(BadRequest, match="inside the file"):
        validate_package(pkg, LIMITS)
    assert os.path.exists(pkg)
