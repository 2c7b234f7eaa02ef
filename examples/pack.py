"""Pack a function folder into a reproducible tar.gz: ``python pack.py DIR OUT``.

Files sit at the root of the archive (the layout fum functions are uploaded in), in
sorted order, with mtime 0, owner 0 and normalised modes, so the same folder always
gives the same bytes.
"""

from __future__ import annotations

import gzip
import io
import sys
import tarfile
from pathlib import Path

SKIP = {"__pycache__", ".pytest_cache", ".DS_Store"}


def files_of(folder: Path, out: Path) -> list[Path]:
    """Return the files to pack, sorted, leaving out caches and archives at the root."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and path.resolve() != out.resolve()
        # archives beside the code are build outputs (python.tar.gz), not part of it
        and not (path.parent == folder and path.name.endswith((".tar.gz", ".zip")))
        and not SKIP.intersection(path.relative_to(folder).parts)
        and path.suffix != ".pyc"
    )


def pack(folder: Path, out: Path) -> None:
    """Write folder's files to out as a deterministic gzip-compressed tar."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in files_of(folder, out):
            info = tarfile.TarInfo(path.relative_to(folder).as_posix())
            data = path.read_bytes()
            info.size = len(data)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
            tar.addfile(info, io.BytesIO(data))
    # gzip stores a timestamp and a file name too: zero and leave out both.
    with out.open("wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(buffer.getvalue())


def main(argv: list[str]) -> None:
    """Parse DIR OUT and pack."""
    if len(argv) != 2:
        raise SystemExit("usage: python pack.py DIR OUT")
    folder, out = Path(argv[0]), Path(argv[1])
    if not folder.is_dir():
        raise SystemExit(f"pack: {folder} is not a folder")
    pack(folder, out)


if __name__ == "__main__":
    main(sys.argv[1:])
