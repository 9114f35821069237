"""Check a tar stream member by member before GNU tar extracts it as root: nothing may leave its tree.

GNU tar run as root with ``--same-owner`` recreates whatever an archive describes: a crafted one
could write outside the target (an absolute name, a ``..``, a member written through a symbolic
link an earlier member made), hard-link a host file such as /etc/shadow into the VE, make a
device node that opens the host's disk, or plant a setuid file owned by host root. ``TarFilter``
sits between the archive and tar: it parses every header the way tar does (pax records and GNU
long names included) and passes a member on only once it is known to be safe, so tar never sees
anything else. A refused archive raises ``UnsafeArchive`` naming the member; the caller throws
away what tar extracted before it (a fresh staging volume).

Refused (the whole archive):
  - names that are absolute, hold ``..``, ``.`` or empty components or a NUL, or lie outside the
    tree's top (``root/`` in a backup, ``./`` in a template);
  - a member below a symbolic link that an earlier member made (tar would write through it), a
    symbolic link over a directory earlier members went into, and any name that appears twice;
  - hard links whose target is not an earlier member of the same archive;
  - relative symbolic links that climb above the tree's top (absolute ones are kept: they
    resolve inside the VE, and host code never follows a VE's links);
  - pax keys and header types GNU tar's own backups and templates never hold (global headers,
    multi-volume, dumpdirs, old GNU sparse), and data on a member type that has none.
Changed (and reported; the rest is extracted as it is):
  - owners outside the VE id range IDMAP_BASE .. IDMAP_BASE+size-1 (host root's, say) become the
    VE's nobody (IDMAP_BASE+65534), which is how the VE saw them anyway, and such members lose
    their setuid/setgid bits: set-id bits survive only on files owned inside the range;
  - device nodes are left out, except the harmless character devices null, zero, full, random,
    urandom, tty, ptmx and the overlayfs whiteout (0:0): LXC gives every VE its own /dev, and a
    block device or /dev/console in a VE's files would open the host's;
  - ACLs naming ids outside the range, file capabilities that are not v3 ones owned inside it
    (a v2 capability works on the host), and xattrs other than user.*, trusted.*,
    security.capability and POSIX ACLs are left out of the member.
Kept: regular files, directories, symbolic links, hard links, FIFOs (harmless: host code reads
VE files non-blocking and regular files only), sparse files, xattrs, ACLs and capabilities.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import stat
import struct
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, NoReturn

from .errors import CommandFailed, InvalidInput
from .tarstream import (
    BLOCK,
    CHUNK,
    NO_DATA,
    ZERO_BLOCK,
    Chunk,
    TarStream,
    big_pipe,
    checksum_ok,
    number,
    octal,
    pax_records,
    stdin_of,
    stdout_of,
    tail,
)

_META_MAX = 1 << 20  # a pax header or GNU long name larger than this is not one tar wrote
EXTRACT_OPTIONS = ["--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "--same-permissions",
                   "--same-owner"]

# Character devices a VE may keep: they open nothing of the host's (ptmx opens the devpts mounted
# next to it, since Linux 4.7; 0:0 is an overlayfs whiteout).
HARMLESS_DEVICES = {(0, 0), (1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 2)}
_KINDS = {b"0": "file", b"\0": "file", b"7": "file", b"1": "hard link", b"2": "symbolic link",
          b"3": "character device", b"4": "block device", b"5": "directory", b"6": "FIFO"}
_PAX_KEYS = {"path", "linkpath", "size", "uid", "gid", "uname", "gname", "mtime", "atime", "ctime",
             "hdrcharset", "charset", "comment", "GNU.sparse.major", "GNU.sparse.minor", "GNU.sparse.name",
             "GNU.sparse.realsize", "GNU.sparse.size", "GNU.sparse.numblocks", "GNU.sparse.offset",
             "GNU.sparse.numbytes", "GNU.sparse.map", "SCHILY.acl.access", "SCHILY.acl.default"}
_REPEATABLE = {"GNU.sparse.offset", "GNU.sparse.numbytes"}  # sparse format 0.0 repeats them
_XATTR = "SCHILY.xattr."
_XATTR_PREFIXES = ("user.", "trusted.")
_ACL_XATTRS = {"system.posix_acl_access", "system.posix_acl_default"}
_CAP_XATTR = "security.capability"
_ACL_USER, _ACL_GROUP = 0x02, 0x08  # posix_acl_xattr tags that carry an id
_VFS_CAP_REVISION_3 = 0x03000000


class UnsafeArchive(InvalidInput):
    """An archive holds a member that could reach outside its tree or into the host: refused."""


def _show(name: bytes, limit: int = 120) -> str:
    text = name.decode("utf-8", "backslashreplace")
    text = text if len(text) <= limit else text[:limit] + "…"
    return repr(text)


def _pax_bytes(records: list[tuple[str, bytes]]) -> bytes:
    """Serialise pax records ("<length> <key>=<value>\\n", the length counting itself)."""
    out = bytearray()
    for key, value in records:
        body = b" " + key.encode("ascii") + b"=" + value + b"\n"
        length = len(body) + 1
        while len(str(length)) + len(body) != length:
            length = len(str(length)) + len(body)
        out += str(length).encode() + body
    return bytes(out)


def _with_size(block: bytes, size: int) -> bytes:
    """A copy of a tar header with another size, and its checksum made again."""
    b = bytearray(block)
    b[124:136] = b"%011o\0" % size
    return _with_checksum(b)


def _with_checksum(b: bytearray) -> bytes:
    b[148:156] = b" " * 8
    b[148:156] = b"%06o\0 " % sum(b)
    return bytes(b)


def _id_field(value: int) -> bytes:
    """A uid/gid header field: octal, or GNU base-256 beyond what 7 octal digits hold."""
    return b"%07o\0" % value if value <= 0o7777777 else bytes([0x80]) + value.to_bytes(7, "big")


class TarFilter(TarStream):
    """Parse a tar stream, pass safe members to ``sink`` and refuse the archive at the first unsafe one.

    ``top`` is the tree's top member (``b"root"``, ``b"."``); ``ids`` the VE's (base, size);
    members whose every name matches ``passthrough`` are passed on unchecked (a backup's own
    vzbackup/ files, which tar is told not to extract). ``done`` ends the refusal message
    ("nothing was restored").
    """

    def __init__(self, sink: Callable[[Chunk], object], top: bytes, ids: tuple[int, int],
                 label: str, done: str = "nothing was extracted", passthrough: re.Pattern | None = None):
        super().__init__()
        self.sink = sink
        self.top = top
        self.lo, self.hi = ids[0], ids[0] + ids[1]
        self.nobody = ids[0] + min(65534, ids[1] - 1)  # the VE's overflow id: how it sees unmapped owners
        self.label = label
        self.done = done
        self.passthrough = passthrough
        self.members = 0
        self.left_out: list[str] = []
        self.kinds: dict[bytes, bytes] = {}  # every member's path below top -> its type (links: the target's)
        self.dirs: set[bytes] = {b""}  # every directory tar made on the way to a member
        self.symlinks: set[bytes] = set()
        self._meta_kind = b""
        self._forward = True
        # The extended headers before the member they describe, as (type, header, data); a pax
        # header's data is its list of records, so that records can be left out when it is passed on.
        self._pending: list[tuple[bytes, bytes, list[tuple[str, bytes]] | bytes]] = []
        self._pax: dict[str, list[bytes]] | None = None
        self._longname: bytes | None = None
        self._longlink: bytes | None = None
        self._out = bytearray()

    # --- the stream ------------------------------------------------------------------------
    def _data(self, piece: memoryview) -> None:
        if self._capture is not None or not self._forward:
            return
        if len(piece) >= 65536:
            self.flush()
            self.sink(piece)
        else:
            self._out.extend(piece)
            if len(self._out) >= CHUNK:
                self.flush()

    def flush(self) -> None:
        if self._out:
            self.sink(self._out)
            self._out = bytearray()

    def _refuse(self, name: bytes | None, why: str) -> NoReturn:
        what = f"member {_show(name)} " if name is not None else ""
        raise UnsafeArchive(f"{self.label} was refused: {what}{why}; {self.done}")

    def _header(self, block: bytes) -> None:
        if block == ZERO_BLOCK:
            if self._pending:
                self._refuse(None, "it ends after a header that describes no member")
            self.ended = True
            return
        if not checksum_ok(block):
            self._refuse(None, f"a damaged tar header follows member {self.members}")
        if block[257:263] == b"ustar\0":
            prefix = block[345:500].split(b"\0", 1)[0]
        elif block[257:265] == b"ustar  \0":
            prefix = b""
        else:
            self._refuse(None, "it holds a header that is neither POSIX nor GNU tar")
        name = block[:100].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
        kind = block[156:157]
        size = number(block[124:136])
        if size is None:
            self._refuse(name, "has a damaged size field")
        if kind in (b"x", b"L", b"K"):
            already = {b"x": self._pax, b"L": self._longname, b"K": self._longlink}[kind]
            if already is not None:
                self._refuse(name, "is described twice by the same kind of extended header")
            if size > _META_MAX:
                self._refuse(name, f"has an extended header of {size} bytes")
            self._meta_block = block
            self._meta_kind = kind
            self._expect(size, capture=True)
            return
        if kind == b"g":
            self._refuse(name, "is a global pax header, which changes every member after it")
        if kind not in _KINDS:
            self._refuse(name, f"has tar type {kind.decode('latin-1')!r}, which backups and templates never hold")
        pax = self._pax or {}
        longname, longlink = self._longname, self._longlink
        self._pax = self._longname = self._longlink = None
        self._meta_kind = b""
        if "size" in pax:
            size = self._decimal(name, pax, "size")[0]
        if kind in NO_DATA and size:
            self._refuse(name, f"is a {_KINDS[kind]} that carries {size} bytes of data")
        keep, strip, block = self._check(block, kind, name, pax, longname, longlink)
        if keep:
            for _meta_kind, meta_block, meta in self._pending:
                if isinstance(meta, list):  # a pax header's records (b"x", see _captured)
                    data = _pax_bytes([(k, v) for k, v in meta if k not in strip])
                    meta_block = _with_size(meta_block, len(data))
                else:
                    data = meta
                self._out.extend(meta_block)
                self._out.extend(data)
                self._out.extend(bytes(-len(data) % BLOCK))
            self._out.extend(block)
            self.members += 1
        self._pending.clear()
        self._forward = keep
        self._expect(size)

    def _captured(self, data: bytes) -> None:
        if self._meta_kind == b"x":
            records = pax_records(data)
            if records is None:
                self._refuse(None, "it holds a damaged pax header")
            pax: dict[str, list[bytes]] = {}
            for key, value in records:
                pax.setdefault(key, []).append(value)
            self._pax = pax
            self._pending.append((b"x", self._meta_block, records))
        else:
            value = data.split(b"\0", 1)[0]
            if self._meta_kind == b"L":
                self._longname = value
            else:
                self._longlink = value
            self._pending.append((self._meta_kind, self._meta_block, data))

    # --- one member --------------------------------------------------------------------------
    def _decimal(self, name: bytes, pax: dict[str, list[bytes]], key: str) -> list[int]:
        values = pax.get(key, [])
        if not all(v.isdigit() for v in values):
            self._refuse(name, f"has a pax {key} that is not a number")
        return [int(v) for v in values]

    def _path(self, name: bytes, what: str = "its name") -> tuple[bytes, ...]:
        """The components below top of a member name (or hard link target); refuse an unsafe one."""
        if b"\0" in name:
            self._refuse(name, f"has a NUL byte in {what}")
        if name.startswith(b"/"):
            self._refuse(name, f"has an absolute path in {what}")
        parts = (name[:-1] if name.endswith(b"/") else name).split(b"/")
        if b".." in parts:
            self._refuse(name, f"climbs out of its tree with '..' in {what}")
        if parts[0] != self.top:
            self._refuse(name, f"lies outside {self.top.decode()}/ ({what})")
        rest = tuple(parts[1:])
        if b"" in rest or b"." in rest:
            self._refuse(name, f"has an empty or '.' component in {what}")
        return rest

    def _check(self, block: bytes, kind: bytes, header_name: bytes, pax: dict[str, list[bytes]],
               longname: bytes | None, longlink: bytes | None) -> tuple[bool, set[str], bytes]:
        """Whether to pass the member on, the pax records to leave out and the header to pass on.

        Raise if the archive is unsafe.
        """
        for record, values in pax.items():
            if len(values) > 1 and record not in _REPEATABLE:
                self._refuse(header_name, f"has {len(values)} pax {record} records")
        # tar takes the name from the pax path or GNU.sparse.name record, or the GNU long name, over
        # the header's: every one that is there must be safe, so the precedence does not matter.
        overrides = [*pax.get("path", []), *pax.get("GNU.sparse.name", []), *([longname] if longname else [])]
        names = overrides or [header_name]
        name = names[0]
        if self.passthrough and kind in (b"0", b"\0") and all(self.passthrough.fullmatch(n) for n in names):
            return True, set(), block
        for record in pax:
            if record not in _PAX_KEYS and not record.startswith(_XATTR):
                self._refuse(name, f"has pax record {record!r}, which backups and templates never hold")
        strip, stripped = self._check_xattrs(pax)
        uids: list[int | None] = [*self._decimal(name, pax, "uid")] or [number(block[108:116])]
        gids: list[int | None] = [*self._decimal(name, pax, "gid")] or [number(block[116:124])]
        if any(i is None or not self.lo <= i < self.hi for i in uids + gids):
            # A host id (root's, say): the VE saw such a file as its nobody, so it gets that owner
            # for real, and loses set-id bits it may only have under an owner of the VE's.
            uid = uids[0] if uids[0] is not None and self.lo <= uids[0] < self.hi else self.nobody
            gid = gids[0] if gids[0] is not None and self.lo <= gids[0] < self.hi else self.nobody
            mode = octal(block[100:108]) or 0
            b = bytearray(block)
            b[100:108] = b"%07o\0" % (mode & ~0o6000)
            b[108:116] = _id_field(uid)
            b[116:124] = _id_field(gid)
            block = _with_checksum(b)
            strip |= {"uid", "gid"} & set(pax)
            setid = ", set-id bits cleared" if mode & 0o6000 else ""
            stripped.append(f"owner {uids[0]}:{gids[0]} is not the VE's: now {uid}:{gid}{setid}")
        paths = [self._path(n) for n in names]
        targets = [*pax.get("linkpath", []), *([longlink] if longlink else [])] or \
            [block[157:257].split(b"\0", 1)[0]]
        keep = True
        if kind == b"1":
            target_kind = None
            for t in targets:
                tparts = self._path(t, "its link target")
                self._not_through_symlink(t, tparts)
                found = self.kinds.get(b"/".join(tparts))
                if found is None or found == b"5":
                    self._refuse(name, f"is a hard link to {_show(t)}, which is no earlier file of the archive")
                target_kind = found
            assert target_kind is not None, "targets is never empty: the header's link name at least"
            if target_kind == b"-":  # a link to a device node that was left out
                keep = False
            kind_seen = target_kind
        elif kind == b"2":
            for t in targets:
                self._check_symlink(name, paths, t)
            kind_seen = kind
        elif kind in (b"3", b"4"):
            dev = (number(block[329:337]), number(block[337:345]))
            keep = kind == b"3" and dev in HARMLESS_DEVICES
            kind_seen = kind if keep else b"-"
        else:
            kind_seen = b"0" if kind in (b"\0", b"7") else kind
        for p in paths:
            key = b"/".join(p)
            self._not_through_symlink(name, p)
            if key in self.kinds or (key == b"" and kind_seen != b"5"):
                self._refuse(name, "appears twice in the archive" if key in self.kinds
                             else f"replaces the top of the tree with a {_KINDS[kind]}")
            if kind_seen == b"2" and key in self.dirs:
                self._refuse(name, "is a symbolic link where earlier members made a directory")
        for p in paths:
            key = b"/".join(p)
            self.kinds[key] = kind_seen
            if kind_seen == b"2":  # a hard link to a symbolic link is one as well
                self.symlinks.add(key)
            for j in range(1, len(p)):
                self.dirs.add(b"/".join(p[:j]))
        if not keep:
            what = _KINDS[kind] if kind != b"1" else "hard link to a device node"
            if kind in (b"3", b"4"):
                what += f" {dev[0]}:{dev[1]}"
            self.left_out.append(f"{name.decode('utf-8', 'backslashreplace')} ({what})")
        elif stripped:
            self.left_out.append(f"{name.decode('utf-8', 'backslashreplace')} ({', '.join(stripped)})")
        return keep, strip, block

    def _not_through_symlink(self, name: bytes, parts: tuple[bytes, ...]) -> None:
        for j in range(1, len(parts)):
            if b"/".join(parts[:j]) in self.symlinks:
                self._refuse(name, f"would be written through the symbolic link {_show(b'/'.join(parts[:j]))} "
                                   "an earlier member made")

    def _check_symlink(self, name: bytes, paths: list[tuple[bytes, ...]], target: bytes) -> None:
        if not target or b"\0" in target:
            self._refuse(name, "is a symbolic link with an empty target or a NUL in it")
        if target.startswith(b"/"):
            return  # resolved inside the VE, where / is the VE's root
        for p in paths:
            depth = len(p) - 1  # the link's directory, counted from the top
            for part in target.split(b"/"):
                if part == b"..":
                    depth -= 1
                    if depth < 0:
                        self._refuse(name, f"is a symbolic link to {_show(target)}, which climbs above the "
                                           "top of its tree")
                elif part not in (b"", b"."):
                    depth += 1

    def _check_xattrs(self, pax: dict[str, list[bytes]]) -> tuple[set[str], list[str]]:
        """The pax records to leave out of a member (xattrs it may not have), and why."""
        strip: set[str] = set()
        why: list[str] = []
        acl_keys = {"SCHILY.acl.access", "SCHILY.acl.default", *(_XATTR + a for a in _ACL_XATTRS)}
        bad_acl = any(not self._acl_text_ok(t) for k in ("SCHILY.acl.access", "SCHILY.acl.default")
                      for t in pax.get(k, []))
        for key, values in pax.items():
            if not key.startswith(_XATTR):
                continue
            attr = key[len(_XATTR):]
            for value in values:
                if attr == _CAP_XATTR:
                    if not (len(value) == 24
                            and struct.unpack_from("<I", value)[0] & 0xFF000000 == _VFS_CAP_REVISION_3
                            and self.lo <= struct.unpack_from("<I", value, 20)[0] < self.hi):
                        strip.add(key)
                        why.append("file capabilities that are not v3 ones of the VE's root")
                elif attr in _ACL_XATTRS:
                    bad_acl = bad_acl or not self._acl_xattr_ok(value)
                elif not attr.startswith(_XATTR_PREFIXES):
                    strip.add(key)
                    why.append(f"extended attribute {attr}")
        if bad_acl:
            strip |= acl_keys & set(pax)
            why.append("an ACL naming ids outside the VE's")
        return strip, why

    def _acl_text_ok(self, text: bytes) -> bool:
        """Whether every user and group an ACL's text names is one of the VE's (names as this host has them)."""
        for entry in re.split(rb"[\n,]", text):
            entry = entry.split(b"#", 1)[0].strip()
            if not entry:
                continue
            fields = entry.split(b":")
            if fields[0] in (b"default", b"d"):
                fields = fields[1:]
            if len(fields) < 3 or not fields[1]:
                continue
            tag, qualifier = fields[0], fields[1]
            if qualifier.isdigit():
                ident = int(qualifier)
            else:  # tar looks names up on this host when it sets the ACL: so do we
                try:
                    if tag in (b"user", b"u"):
                        ident = pwd.getpwnam(qualifier.decode("utf-8")).pw_uid
                    else:
                        ident = grp.getgrnam(qualifier.decode("utf-8")).gr_gid
                except (KeyError, UnicodeDecodeError):
                    return False
            if not self.lo <= ident < self.hi:
                return False
        return True

    def _acl_xattr_ok(self, value: bytes) -> bool:
        if len(value) < 4 or (len(value) - 4) % 8:
            return False
        for off in range(4, len(value), 8):
            tag, _perm, ident = struct.unpack_from("<HHI", value, off)
            if tag in (_ACL_USER, _ACL_GROUP) and not self.lo <= ident < self.hi:
                return False
        return True


def left_out_message(left_out: list[str]) -> str:
    """One line saying what an extraction changed or left out, for the progress log."""
    shown = "; ".join(left_out[:5]) + (f"; and {len(left_out) - 5} more" if len(left_out) > 5 else "")
    return f"{len(left_out)} member(s) changed or left out, as no VE may have them: {shown}"


# --- extraction ------------------------------------------------------------------------------

class SafeExtract:
    """``tar -x`` into ``dest`` fed only what a ``TarFilter`` lets through; use as a context manager.

    Feed it the tar stream, then call ``finish()``. On an error the tar is killed; what it wrote
    stays in ``dest`` for the caller to throw away (it is always a fresh directory of its own).
    """

    def __init__(self, dest: Path, top: bytes, ids: tuple[int, int], label: str, done: str,
                 members: list[str] | None = None, passthrough: re.Pattern | None = None):
        self.dest = dest
        self.members = members or []
        self.filter = TarFilter(self._write, top, ids, label, done, passthrough)
        self.label = label
        self._tar: subprocess.Popen[bytes] | None = None
        self._err: IO[bytes] | None = None

    def __enter__(self) -> SafeExtract:
        self._err = tempfile.TemporaryFile()
        self._tar = subprocess.Popen(["tar", "-x", *EXTRACT_OPTIONS, "-C", str(self.dest), "-f", "-",
                                      *self.members], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=self._err)
        big_pipe(self._tar.stdin)
        return self

    def _running(self) -> tuple[subprocess.Popen[bytes], IO[bytes], IO[bytes]]:
        """tar, its stdin and its error output, which ``__enter__`` made."""
        assert self._tar is not None and self._err is not None, "SafeExtract is used outside its with block"
        return self._tar, stdin_of(self._tar), self._err

    def _write(self, data: Chunk) -> None:
        tar, stdin, err = self._running()
        try:
            stdin.write(data)
        except BrokenPipeError:
            tar.wait()
            raise CommandFailed(f"tar failed while extracting {self.label}: {tail(err)}") from None

    def feed(self, data: Chunk) -> None:
        self.filter.feed(data)

    @property
    def left_out(self) -> list[str]:
        return self.filter.left_out

    def finish(self) -> None:
        """End the stream (the filter sees its end) and wait for tar; raise if tar failed."""
        self.filter.feed(ZERO_BLOCK)
        self.filter.flush()
        self._write(ZERO_BLOCK * 2)
        tar, stdin, err = self._running()
        stdin.close()
        if tar.wait() != 0:
            raise CommandFailed(f"tar failed while extracting {self.label}: {tail(err)}")

    def __exit__(self, *exc: object) -> None:
        tar, stdin, err = self._running()
        with contextlib.suppress(OSError):
            stdin.close()
        if tar.poll() is None:
            tar.kill()
        tar.wait()
        err.close()


def extract_zst(path: Path, dest: Path, top: bytes, ids: tuple[int, int], label: str,
                done: str = "nothing was extracted") -> list[str]:
    """Extract a .tar.zst into ``dest`` through a ``TarFilter``; return the members it left out."""
    with open(path, "rb") as f, tempfile.TemporaryFile() as zerr, \
            SafeExtract(dest, top, ids, label, done) as ex:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise InvalidInput(f"{label}: {path} is not a regular file")
        zstd = subprocess.Popen(["zstd", "-q", "-dc"], stdin=f, stdout=subprocess.PIPE, stderr=zerr)
        out = stdout_of(zstd)
        try:
            big_pipe(out)
            while chunk := out.read1(CHUNK):
                ex.feed(chunk)
                if ex.filter.ended:
                    break
            if not ex.filter.ended:
                zstd.wait()
                raise InvalidInput(f"{label}: {path} is truncated or damaged ({tail(zerr)}); {done}")
        finally:
            with contextlib.suppress(OSError):
                out.close()
            if zstd.poll() is None:
                zstd.kill()
            zstd.wait()
        ex.finish()
        return ex.left_out
