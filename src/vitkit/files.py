"""Files written whole or not at all, and their checksums: the lowest layer, below data and checkpoints.

`atomic_write` writes beside the target, fsyncs, then renames, so a crash mid-write leaves the previous
file intact; the caller's `write` may also check the new file before it takes the old one's place (as
`vitkit.export` does with ONNX Runtime). The file is created as `open()` creates one, with mode 0666 less
the process's umask (0644 under the usual 022), so other users and containers can read what vitkit writes.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path
from typing import Callable

_BLOCK = 1 << 20  # bytes read at a time while hashing


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call write(tmp) on a temporary file beside `path`, fsync it, then rename it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_file_beside(path)
    mode = os.stat(tmp).st_mode & 0o777  # what the umask gave
    try:
        write(tmp)
        if os.stat(tmp).st_mode & 0o777 != mode:  # a writer that replaces the file (safetensors: 0600)
            os.chmod(tmp, mode)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _new_file_beside(path: Path) -> str:
    """A new empty file `.NAME.RANDOM.tmp` in path's folder, mode 0666 less the umask (mkstemp's is 0600)."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return str(tmp)
        except FileExistsError:
            continue


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, as a hex string, read a block at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
