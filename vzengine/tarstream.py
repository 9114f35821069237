"""A tar byte stream read header by header, without tarfile: the framing both of our tar readers share.

``archive.TarFilter`` (what a restore or a template may extract) and ``backup.TarScanner`` (hash, count
and find a backup's own members) each subclass ``TarStream``: it assembles the 512-byte headers, hands each
to ``_header``, hands member data to ``_data`` and collects small members a subclass asks to see (pax
headers, long names, a backup's own files) for ``_captured``. Also the header field parsers and the pipe
helpers both modules use around ``tar`` and ``zstd``.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import subprocess
from typing import IO

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
CHUNK = 1 << 20
NO_DATA = {b"1", b"2", b"3", b"4", b"5", b"6"}  # hard and symbolic links, devices, directories, FIFOs
Chunk = bytes | bytearray | memoryview  # a piece of a tar stream, as it is fed and passed on


def octal(field: bytes) -> int | None:
    """An octal header field (NUL or space padded); 0 when empty, None when it is not octal."""
    s = field.replace(b"\0", b" ").strip()
    if not s:
        return 0
    try:
        return int(s, 8)
    except ValueError:
        return None


def number(field: bytes) -> int | None:
    """A numeric header field: octal, or GNU base-256; None when it is neither (or negative)."""
    if field[0] == 0x80:
        return int.from_bytes(field[1:], "big")
    if field[0] & 0x80:
        return None
    return octal(field)


def checksum_ok(block: bytes) -> bool:
    return octal(block[148:156]) == sum(block[:148]) + 256 + sum(block[156:])


def pax_records(data: bytes) -> list[tuple[str, bytes]] | None:
    """The (key, value) records of a pax extended header, in order; None if it is malformed."""
    out = []
    i = 0
    while i < len(data):
        if data[i:].strip(b"\0") == b"":
            break
        sp = data.find(b" ", i)
        if sp < 0 or not data[i:sp].isdigit():
            return None
        length = int(data[i:sp])
        end = i + length
        if length <= sp - i + 1 or end > len(data) or data[end - 1:end] != b"\n":
            return None
        key, eq, value = data[sp + 1:end - 1].partition(b"=")
        if not eq:
            return None
        try:
            out.append((key.decode("ascii"), value))
        except UnicodeDecodeError:
            return None
        i = end
    return out


def big_pipe(f: IO[bytes] | None) -> None:
    """Grow a pipe to 1 MiB: fewer, larger reads and writes between the tools and us (None: no pipe)."""
    if f is None:
        return
    with contextlib.suppress(OSError):
        fcntl.fcntl(f.fileno(), fcntl.F_SETPIPE_SZ, CHUNK)


def stdout_of(proc: subprocess.Popen[bytes]) -> io.BufferedReader:
    """The stdout of a tool started with stdout=PIPE (binary, buffered: it has read1)."""
    out = proc.stdout
    assert isinstance(out, io.BufferedReader), "started with stdout=PIPE and the default buffering"
    return out


def stdin_of(proc: subprocess.Popen[bytes]) -> IO[bytes]:
    """The stdin of a tool started with stdin=PIPE."""
    assert proc.stdin is not None, "started with stdin=PIPE"
    return proc.stdin


def tail(f: IO[bytes]) -> str:
    """The last lines of a tool's error output (a temporary file), for a message."""
    f.seek(0)
    lines = f.read().decode(errors="replace").strip().splitlines()
    return " ".join(lines[-3:])[-300:] if lines else "no error output"


class TarStream:
    """Feed tar bytes in pieces of any size; subclasses say what a header and member data mean.

    ``_header(block)`` gets each 512-byte header and calls ``_expect(size, capture)`` for the data that
    follows it (or sets ``ended`` at the end-of-archive block); ``_data(piece)`` gets that data, padding
    included; with ``capture`` the member's data (without padding) also reaches ``_captured(data)``.
    """

    def __init__(self) -> None:
        self.ended = False
        self._hdr = bytearray()
        self._left = 0  # bytes of the current member's data (with padding) still to come
        self._take = 0  # how much of that is data being captured (not padding)
        self._capture: bytearray | None = None

    def feed(self, data: Chunk) -> None:
        view = memoryview(data)
        i, n = 0, len(view)
        while i < n and not self.ended:
            if self._left:
                k = min(self._left, n - i)
                piece = view[i:i + k]
                if self._capture is not None and self._take:
                    t = min(self._take, k)
                    self._capture.extend(piece[:t])
                    self._take -= t
                self._data(piece)
                self._left -= k
                i += k
                if not self._left and self._capture is not None:
                    self._end_capture()
                continue
            k = min(BLOCK - len(self._hdr), n - i)
            self._hdr.extend(view[i:i + k])
            i += k
            if len(self._hdr) == BLOCK:
                block = bytes(self._hdr)
                self._hdr.clear()
                self._header(block)
        if self.ended:
            self.flush()

    def _expect(self, size: int, capture: bool = False) -> None:
        """The member whose header was just read has ``size`` bytes of data; keep them if ``capture``."""
        self._take = size
        self._left = (size + BLOCK - 1) // BLOCK * BLOCK
        self._capture = bytearray() if capture else None
        if capture and not self._left:
            self._end_capture()

    def _end_capture(self) -> None:
        data = bytes(self._capture or b"")
        self._capture = None
        self._captured(data)

    def _header(self, block: bytes) -> None:
        raise NotImplementedError

    def _data(self, piece: memoryview) -> None:
        raise NotImplementedError

    def _captured(self, data: bytes) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Pass on what is buffered."""
