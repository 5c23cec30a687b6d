"""Reading files that may be hostile: regular files only, never blocking, never without bound.

Every file the suite reads from a user (``--config``, data files, label lists, caches, archives, checkpoints)
goes through here, so one place guarantees that:

- only a regular file is opened: a FIFO, a device (``/dev/zero``), a socket or a directory is refused with one
  line, never read (checked before opening, and again on the descriptor, which is opened non-blocking so that a
  FIFO swapped in between cannot hang the reader);
- at most ``max_bytes`` are read, and compressed data inflate to at most ``max_out`` bytes
  (:func:`gunzip_bounded`), so a 33 MB archive member cannot become 7 GiB in memory.

Errors are :class:`nlbench.errors.NLBenchError` (or ``ValueError`` where the caller reports per file).
"""

from __future__ import annotations

import os
import stat
import zlib
from pathlib import Path

from nlbench.errors import NLBenchError


def special_kind(mode: int) -> str | None:
    """What a file that is not a regular file is, for messages (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def check_regular(path: str | os.PathLike, what: str = "file") -> os.stat_result:
    """``os.stat`` of ``path`` (symlinks followed) if it is a regular file; else :class:`NLBenchError`."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise NLBenchError(f"cannot read {what} {path}: {e.strerror or e}") from None
    kind = special_kind(st.st_mode)
    if kind is not None:
        raise NLBenchError(f"{what} {path} is {kind}, not a regular file")
    return st


def open_regular(path: str | os.PathLike, what: str = "file"):
    """A binary file object of ``path`` opened without blocking, after checking (before and after opening) that
    it is a regular file; :class:`NLBenchError` otherwise."""
    check_regular(path, what)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise NLBenchError(f"cannot read {what} {path}: {e.strerror or e}") from None
    f = os.fdopen(fd, "rb")
    kind = special_kind(os.fstat(fd).st_mode)
    if kind is not None:
        f.close()
        raise NLBenchError(f"{what} {path} is {kind}, not a regular file")
    return f


def read_bounded(path: str | os.PathLike, max_bytes: int, what: str = "file") -> bytes:
    """The bytes of regular file ``path``, refusing (one line) a file over ``max_bytes``."""
    with open_regular(path, what) as f:
        size = os.fstat(f.fileno()).st_size
        data = b"" if size > max_bytes else f.read(max_bytes + 1)
    if max(size, len(data)) > max_bytes:
        raise NLBenchError(f"{what} {path} is larger than {max_bytes:,} bytes")
    return data


def gunzip_bounded(data: bytes, max_out: int, what: str = "file") -> bytes:
    """Inflate gzip ``data`` (several members allowed) to at most ``max_out`` bytes; :class:`NLBenchError` for
    more (a decompression bomb) or for corrupt data."""
    out = bytearray()
    rest = data
    try:
        while rest:
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            out += d.decompress(rest, max_out + 1 - len(out))
            if len(out) > max_out:
                raise NLBenchError(f"{what} inflates to more than {max_out:,} bytes")
            if not d.eof:
                if d.unconsumed_tail:  # output limit reached with input left
                    raise NLBenchError(f"{what} inflates to more than {max_out:,} bytes")
                raise NLBenchError(f"{what} is truncated (the gzip stream ends early)")
            rest = d.unused_data.lstrip(b"\0")
    except zlib.error as e:
        raise NLBenchError(f"{what} is not valid gzip data ({e})") from None
    return bytes(out)


def read_maybe_gzip(path: str | os.PathLike, max_bytes: int, max_out: int, what: str = "file") -> bytes:
    """A regular file's bytes, inflated if its name ends in ``.gz``, each step bounded."""
    raw = read_bounded(path, max_bytes, what)
    return gunzip_bounded(raw, max_out, f"{what} {path}") if Path(path).suffix == ".gz" else raw
