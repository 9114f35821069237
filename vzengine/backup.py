"""VE backups: one .tar.zst archive per backup, taken from a read-only snapshot while the VE runs.

An archive is a single POSIX tar stream, compressed with zstd, holding in this order:

    vzbackup/info.json       what it is (format, VE id, template, time): read first, to refuse
                             a foreign file at once
    vzbackup/ve.conf         the VE's config
    root/...                 the VE's files as GNU tar writes them (numeric owners, modes,
                             xattrs, ACLs, hard links, device nodes, sparse files)
    vzbackup/manifest.json   counts, sizes and the SHA-256 of every byte before it

The manifest is last because the checksum covers everything written before it; a reader
hashes the stream as it goes (``TarScanner``), so verifying and restoring take one pass,
and a restore that finds a bad checksum throws its half-extracted copy away.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from . import archive, images, roots, validate
from .backupdir import (
    SUFFIX,
    backup_dir,
    open_file,
    open_named,
)
from .errors import AlreadyExists, CommandFailed, InvalidInput, Unsupported
from .layout import read_kv
from .progress import Progress
from .progress import quiet as _quiet
from .rollback import Rollback
from .run import which
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
    pax_records,
    stdin_of,
    stdout_of,
    tail,
)
from .veconf import VEConfig

if TYPE_CHECKING:
    from .engine import Engine, VEInfo


FORMAT = "vzpanel-backup"
VERSION = 1
INFO = "vzbackup/info.json"
CONF = "vzbackup/ve.conf"
MANIFEST = "vzbackup/manifest.json"
OURS = "vzbackup/"
_OURS_RE = re.compile(rb"vzbackup/(?:info\.json|ve\.conf|manifest\.json)")
TAR_OPTIONS = ["--format=posix", "--pax-option=delete=atime,delete=ctime", "--numeric-owner", "--xattrs",
               "--xattrs-include=*", "--acls"]
# Header types that carry no data (POSIX: hard link, symlink, devices, directory, FIFO).
# Headers that describe the member after them (pax extended, GNU long name/link).
_META = {b"x", b"g", b"L", b"K"}
_CAPTURE_MAX = 1 << 20




class BadArchive(InvalidInput):
    """The file is not a vzpanel backup, or it is truncated or damaged."""


# --- the archive format ----------------------------------------------------------------------

class TarScanner(TarStream):
    """Follow a tar byte stream header by header: hash it, count its members, keep our own small ones.

    Member data passes through untouched (to ``sink``, when given). The end-of-archive block is
    not passed on, so a writer can append members after GNU tar's output.
    """

    def __init__(self, sink: Callable[[Chunk], object] | None = None):
        super().__init__()
        self.sink = sink
        self.sha = hashlib.sha256()
        self.offset = 0  # bytes accepted so far (before the end-of-archive block)
        self.members = 0  # entries of the VE's tree (files, directories, links, devices)
        self.data_bytes = 0  # bytes of regular-file data among them
        self.names: list[str] = []  # our own members, in order
        self.captured: dict[str, bytes] = {}
        self.hash_before: dict[str, str] = {}  # our member -> SHA-256 of all bytes before its header
        self.offset_before: dict[str, int] = {}
        self.first: str | None = None
        self._cap_name = ""  # the member being captured: one of ours, or "\0pax"
        self._pax_size: int | None = None
        self._overridden = False  # the next header's name was set by a pax/GNU header before it
        self._out = bytearray()

    def _emit(self, data: Chunk) -> None:
        self._out += data
        self.offset += len(data)
        if len(self._out) >= CHUNK:
            self.flush()

    def flush(self) -> None:
        """Hash and pass on what is buffered (the scanner buffers to hash and write in big pieces)."""
        if self._out:
            self.sha.update(self._out)
            if self.sink is not None:
                self.sink(self._out)
            self._out = bytearray()

    def _data(self, piece: memoryview) -> None:
        self._emit(piece)

    def _header(self, block: bytes) -> None:
        if block == ZERO_BLOCK:
            self.ended = True
            return
        if not checksum_ok(block):
            raise BadArchive(f"damaged tar header at byte {self.offset} of the archive")
        name = block[:100].split(b"\0", 1)[0]
        if block[257:263] == b"ustar\x00":
            prefix = block[345:500].split(b"\0", 1)[0]
            if prefix:
                name = prefix + b"/" + name
        kind = block[156:157]
        size = number(block[124:136])
        if size is None:
            raise BadArchive(f"damaged tar header (size field) at byte {self.offset} of the archive")
        if kind not in _META and self._pax_size is not None:
            size = self._pax_size
        text = name.decode("utf-8", "replace")
        ours = kind in (b"0", b"\0") and not self._overridden and text.startswith(OURS)
        if self.first is None:
            self.first = text
        if ours:
            self.flush()
            self.names.append(text)
            self.hash_before[text] = self.sha.hexdigest()
            self.offset_before[text] = self.offset
        self._emit(block)
        if kind in _META:
            self._overridden = True
        else:
            self._overridden = False
            self._pax_size = None
            if not ours:
                self.members += 1
                if kind in (b"0", b"\0", b"7", b"S"):
                    self.data_bytes += size
        if kind in NO_DATA:
            size = 0
        if (ours or kind in (b"x", b"g")) and size > _CAPTURE_MAX:
            raise BadArchive(f"member {text} is too large for a vzpanel backup's own file")
        self._cap_name = text if ours else "\0pax"
        self._expect(size, capture=ours or kind == b"x")

    def _captured(self, data: bytes) -> None:
        if self._cap_name != "\0pax":
            self.captured[self._cap_name] = data
            return
        records = pax_records(data)
        if records is None:
            raise BadArchive("damaged pax header")
        sizes = [v for k, v in records if k == "size"]
        if sizes and not sizes[-1].isdigit():
            raise BadArchive("damaged pax header (size record)")
        self._pax_size = int(sizes[-1]) if sizes else None


def member(name: str, data: bytes) -> bytes:
    """One tar member (ustar header and padded data) holding ``data`` as regular file ``name``."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    info.mtime = int(time.time())
    pad = (-len(data)) % BLOCK
    return info.tobuf(format=tarfile.USTAR_FORMAT) + data + bytes(pad)


# --- writing -----------------------------------------------------------------------------------

@dataclass
class BackupResult:
    path: Path
    manifest: dict

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def _need(tool: str, package: str) -> None:
    if not which(tool):
        raise Unsupported(f"backups need {tool}: apt-get install {package}")


def backup(eng: Engine, ctid, directory: str | os.PathLike | None = None,
           progress: Progress = _quiet) -> BackupResult:
    """Write a backup archive of a VE (running or not) into ``directory`` (default <root>/backups)."""
    _need("zstd", "zstd")
    conf = eng.config(ctid)
    ctid = conf.ctid
    outdir = backup_dir(eng, directory)
    if outdir.exists() and not outdir.is_dir():
        raise InvalidInput(f"backup directory {outdir} is not a directory")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with eng._lock(ctid, "backup"):
        running = eng.is_running(ctid)
        state = "suspended" if images.is_suspended(eng, ctid) else "running" if running else "stopped"
        conf_bytes = conf.path.read_bytes()
        if not eng.storage.can_snapshot:
            if running:
                raise Unsupported(f"VE {ctid} runs and this root keeps VEs in plain directories (STORAGE=dir), "
                                  "which cannot be snapshotted: stop the VE to back it up")
            # Plain directories: copy under the lock, so the VE stays stopped meanwhile.
            return _write(eng, conf, conf_bytes, eng.layout.private(ctid), outdir, stamp, state, progress)
        progress(2, "taking a read-only snapshot to back up from")
        src = roots.temp_snapshot(eng, ctid, "backup")
    # The snapshot is a consistent copy: the VE may start, stop or change while it is being read.
    try:
        return _write(eng, conf, conf_bytes, src, outdir, stamp, state, progress)
    finally:
        roots.drop_temp_snapshot(eng, src)


def _write(eng: Engine, conf: VEConfig, conf_bytes: bytes, src: Path, outdir: Path, stamp: str,
           state: str, progress: Progress) -> BackupResult:
    outdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    final = outdir / f"ve-{conf.ctid}-{stamp}{SUFFIX}"
    n = 1
    while final.exists():
        n += 1
        final = outdir / f"ve-{conf.ctid}-{stamp}-{n}{SUFFIX}"
    partial = final.with_name(f".{final.name}.partial")
    estimate = eng.storage.usage(src)
    info = {"format": FORMAT, "version": VERSION, "ctid": conf.ctid, "hostname": conf.hostname,
            "ostemplate": conf.ostemplate, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "ve_state": state, "idmap_base": eng._base_uid(), "estimated_bytes": estimate}
    t0 = time.monotonic()
    try:
        manifest = _pipe_out(conf, conf_bytes, src, partial, info, estimate, t0, progress)
        os.replace(partial, final)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    secs = time.monotonic() - t0
    progress(100, f"VE {conf.ctid} backed up to {final} ({manifest['bytes'] / 1e6:.0f} MB of files, "
                  f"{final.stat().st_size / 1e6:.0f} MB compressed, {secs:.1f} s)")
    return BackupResult(final, manifest)


def _pipe_out(conf: VEConfig, conf_bytes: bytes, src: Path, partial: Path, info: dict,
              estimate: int | None, t0: float, progress: Progress) -> dict:
    """tar of ``src`` -> scanner (hash, count, our members around it) -> zstd -> ``partial``."""
    with open(partial, "wb") as out_f, tempfile.TemporaryFile() as zerr, tempfile.TemporaryFile() as terr:
        os.fchmod(out_f.fileno(), 0o600)
        zstd = subprocess.Popen(["zstd", "-q", "-T0", "-3", "-c"], stdin=subprocess.PIPE, stdout=out_f,
                                stderr=zerr)
        tar = None
        try:
            tar = subprocess.Popen(["tar", "-c", *TAR_OPTIONS, "--sparse", "-b2048",
                                    "--transform", r"s,^\.,root,S", "-C", str(src), "-f", "-", "."],
                                   stdout=subprocess.PIPE, stderr=terr)
            tar_out, zstd_in = stdout_of(tar), stdin_of(zstd)
            big_pipe(tar_out)
            big_pipe(zstd_in)
            scanner = TarScanner(sink=zstd_in.write)
            scanner.feed(member(INFO, json.dumps(info, indent=1).encode()))
            scanner.feed(member(CONF, conf_bytes))
            last, last_pct = t0, 5
            while chunk := tar_out.read1(CHUNK):
                scanner.feed(chunk)
                now = time.monotonic()
                done = scanner.offset
                pct = min(95, 5 + int(90 * done / estimate)) if estimate else 50
                if now - t0 >= 0.5 and (now - last >= 1.0 or pct >= last_pct + 5):  # each second or 5 %
                    last, last_pct = now, pct
                    of = f" of ~{estimate / 1e6:.0f} MB" if estimate else ""
                    progress(pct, f"backed up {done / 1e6:.0f} MB{of} ({done / 1e6 / (now - t0):.0f} MB/s)")
            tar_out.close()
            if tar.wait() != 0:
                raise CommandFailed(f"tar failed while backing up VE {conf.ctid}: {tail(terr)}")
            if not scanner.ended:
                raise CommandFailed(f"tar's output for VE {conf.ctid} ended without an end-of-archive block")
            scanner.flush()
            manifest = {
                "format": FORMAT, "version": VERSION, "ctid": conf.ctid, "hostname": conf.hostname,
                "ostemplate": conf.ostemplate, "created": info["created"], "ve_state": info["ve_state"],
                "idmap_base": info["idmap_base"], "files": scanner.members, "bytes": scanner.data_bytes,
                "tar_bytes": scanner.offset, "sha256": scanner.sha.hexdigest(),
                "conf_sha256": hashlib.sha256(conf_bytes).hexdigest(),
            }
            zstd_in.write(member(MANIFEST, json.dumps(manifest, indent=1).encode()) + ZERO_BLOCK * 2)
            zstd_in.close()
            if zstd.wait() != 0:
                raise CommandFailed(f"zstd failed while writing {partial}: {tail(zerr)}")
        except BrokenPipeError:
            raise CommandFailed(f"zstd failed while writing {partial}: {tail(zerr)}") from None
        finally:
            if tar is not None:
                _reap(tar)
            _reap(zstd)
        out_f.flush()
        os.fsync(out_f.fileno())
    return manifest


def _reap(proc: subprocess.Popen) -> None:
    for f in (proc.stdin, proc.stdout):
        if f:
            with contextlib.suppress(OSError):
                f.close()
    if proc.poll() is None:
        proc.kill()
    proc.wait()


# --- reading -----------------------------------------------------------------------------------

def read_info(path: str | os.PathLike) -> dict:
    """The info block at the start of a backup; refuses a file that is not one of ours at once."""
    with open_file(path) as f:
        return _read_info(f, str(Path(path).absolute()))


def _read_info(f: BinaryIO, path: str) -> dict:
    _need("zstd", "zstd")
    scanner = TarScanner()
    os.lseek(f.fileno(), 0, os.SEEK_SET)  # zstd reads the descriptor itself
    with subprocess.Popen(["zstd", "-q", "-dc"], stdin=f, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL) as zstd:
        try:
            while not scanner.ended and INFO not in scanner.captured and scanner.offset < (1 << 20):
                chunk = stdout_of(zstd).read(64 << 10)
                if not chunk:
                    break
                scanner.feed(chunk)
        except BadArchive:
            pass
        finally:
            zstd.kill()
    return _check_info(path, scanner)


def _check_info(path: str, scanner: TarScanner) -> dict:
    if scanner.first != INFO or INFO not in scanner.captured:
        raise BadArchive(f"{path} is not a vzpanel backup (no {INFO} at its start)")
    try:
        info = json.loads(scanner.captured[INFO])
    except ValueError:
        raise BadArchive(f"{path}: its {INFO} is damaged") from None
    if info.get("format") != FORMAT:
        raise BadArchive(f"{path} is not a vzpanel backup")
    if info.get("version") != VERSION:
        raise BadArchive(f"{path} is a vzpanel backup of format version {info.get('version')}; "
                         f"this vzctl reads version {VERSION}")
    return info


def scan(path: str | os.PathLike, sink: Callable[[Chunk], object] | None = None,
         progress: Progress = _quiet, what: str = "verified") -> tuple[dict, dict, bytes]:
    """Read a whole archive, passing its tar stream to ``sink``; check it; return (info, manifest, conf)."""
    with open_file(path) as f:
        return _scan(f, str(Path(path).absolute()), sink, progress, what)


def _scan(f: BinaryIO, path: str, sink: Callable[[Chunk], object] | None = None,
          progress: Progress = _quiet, what: str = "verified") -> tuple[dict, dict, bytes]:
    _need("zstd", "zstd")
    total = os.fstat(f.fileno()).st_size
    scanner = TarScanner(sink=sink)
    t0 = last = time.monotonic()
    last_pct = 0
    os.lseek(f.fileno(), 0, os.SEEK_SET)  # zstd reads the descriptor itself
    with tempfile.TemporaryFile() as errf:
        zstd = subprocess.Popen(["zstd", "-q", "-dc"], stdin=f, stdout=subprocess.PIPE, stderr=errf)
        zstd_out = stdout_of(zstd)
        big_pipe(zstd_out)
        try:
            while chunk := zstd_out.read1(CHUNK):
                scanner.feed(chunk)
                if scanner.first is not None and scanner.first != INFO:
                    raise BadArchive(f"{path} is not a vzpanel backup (no {INFO} at its start)")
                now = time.monotonic()
                pos = os.lseek(f.fileno(), 0, os.SEEK_CUR)  # shared with zstd, which reads the file
                pct = min(95, int(95 * pos / max(total, 1)))
                if now - t0 >= 0.5 and (now - last >= 1.0 or pct >= last_pct + 5):
                    last, last_pct = now, pct
                    progress(pct, f"{what} {scanner.offset / 1e6:.0f} MB "
                                  f"({scanner.offset / 1e6 / (now - t0):.0f} MB/s)")
                if scanner.ended:
                    break
            zstd_out.close()
            rc = zstd.wait()
        finally:
            _reap(zstd)
        zerr = tail(errf)
    if rc != 0 and not scanner.ended:
        low = zerr.lower()
        if "unknown header" in low or "unsupported format" in low or "not in zstd format" in low:
            raise BadArchive(f"{path} is not a vzpanel backup (not zstd-compressed)")
        if scanner.offset == 0:
            raise BadArchive(f"{path} is not a vzpanel backup ({zerr})")
        if "premature" in low or "truncated" in low or "end of file" in low:
            raise BadArchive(f"{path} is truncated: it ends after {scanner.offset / 1e6:.1f} MB ({zerr})")
        raise BadArchive(f"{path} is damaged: {zerr}")
    info = _check_info(path, scanner)
    if MANIFEST not in scanner.captured or not scanner.ended:
        raise BadArchive(f"{path} is truncated: it ends after {scanner.offset / 1e6:.1f} MB, "
                         "before its manifest")
    if scanner.names[-1] != MANIFEST:
        raise BadArchive(f"{path} is damaged: data follows its manifest")
    try:
        manifest = json.loads(scanner.captured[MANIFEST])
    except ValueError:
        raise BadArchive(f"{path} is damaged: its manifest is not valid JSON") from None
    conf = scanner.captured.get(CONF)
    if conf is None:
        raise BadArchive(f"{path} is damaged: it holds no VE config")
    if manifest.get("sha256") != scanner.hash_before[MANIFEST]:
        raise BadArchive(f"{path} is corrupted: its data does not match the checksum in its manifest")
    checks = {
        "conf_sha256": hashlib.sha256(conf).hexdigest(),
        "files": scanner.members,
        "bytes": scanner.data_bytes,
        "tar_bytes": scanner.offset_before[MANIFEST],
        "ctid": info.get("ctid"),
    }
    for key, value in checks.items():
        if manifest.get(key) != value:
            raise BadArchive(f"{path} is corrupted: its manifest says {key}={manifest.get(key)!r}, "
                             f"the archive holds {value!r}")
    if rc != 0:
        raise BadArchive(f"{path} is damaged: {zerr}")
    return info, manifest, conf


def verify(path: str | os.PathLike, progress: Progress = _quiet) -> dict:
    """Check a backup archive end to end; return its manifest."""
    with open_file(path) as f:
        return _verify(f, str(path), progress)


def verify_named(eng: Engine, name: str, directory: str | os.PathLike | None = None,
                 progress: Progress = _quiet) -> dict:
    """Check backup ``name`` in the backup directory end to end; return its manifest."""
    d = backup_dir(eng, directory)
    with open_named(d, name) as f:
        return _verify(f, str(d / name), progress)


def _verify(f: BinaryIO, path: str, progress: Progress) -> dict:
    _, manifest, _ = _scan(f, path, progress=progress)
    progress(100, f"{path}: OK, VE {manifest['ctid']}, {manifest['files']} files, "
                  f"{manifest['bytes'] / 1e6:.0f} MB, sha256 {manifest['sha256'][:16]}...")
    return manifest


# --- restoring ---------------------------------------------------------------------------------

def restore(eng: Engine, path: str | os.PathLike, ctid=None, force: bool = False,
            progress: Progress = _quiet) -> VEInfo:
    """Restore a backup as VE ``ctid`` (default: the id it was taken from).

    An existing VE is replaced only with ``force``; it is stopped first and started again after
    when it was running. Under another id than the original, the VE's addresses and port forwards
    are not restored (the original may still use them): an existing target keeps its own.
    The archive's members pass ``archive.TarFilter`` on their way to tar: one that could reach
    outside the VE refuses the whole archive and nothing is restored.
    """
    with open_file(path) as f:
        return _restore(eng, f, str(Path(path).absolute()), ctid, force, progress)


def restore_named(eng: Engine, name: str, ctid=None, directory: str | os.PathLike | None = None,
                  force: bool = False, progress: Progress = _quiet) -> VEInfo:
    """Restore backup ``name`` (a file name, no path) from the backup directory; see ``restore``."""
    d = backup_dir(eng, directory)
    with open_named(d, name) as f:
        return _restore(eng, f, str(d / name), ctid, force, progress)


def _restore(eng: Engine, f: BinaryIO, path: str, ctid, force: bool, progress: Progress) -> VEInfo:
    info = _read_info(f, path)
    target = validate.ctid(ctid if ctid is not None else info.get("ctid"))
    base = eng._base_uid()
    if info.get("idmap_base") != base:
        raise Unsupported(f"the backup's files are owned from uid {info.get('idmap_base')} on; this root maps "
                          f"VEs from uid {base}: restore it on a root with IDMAP_BASE={info.get('idmap_base')}")
    if eng.exists(target) and not force:
        raise AlreadyExists(f"VE {target} exists: restoring over it replaces its files and config; "
                            "add --force to do that")
    _need("tar", "tar")
    with eng._lock(target, "restore"), Rollback() as rb:
        existing = eng.exists(target)
        if existing and not force:
            raise AlreadyExists(f"VE {target} exists: add --force to replace it")
        private = eng.layout.private(target)
        if not existing and (private.exists() or os.path.lexists(private)):
            raise AlreadyExists(f"VE {target} has no config but its root {private} exists: remove it or "
                                "pick another id")
        # Extract into <pool>/private/.<id>.restore/root, a fresh volume of its own, then move it in.
        stage = eng.layout.pool / "private" / f".{target}.restore"
        if stage.exists():
            eng.storage.delete(stage / "root")
            shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(mode=0o700)
        rb.add("remove the staging directory", lambda: shutil.rmtree(stage, ignore_errors=True))
        new = stage / "root"
        eng.storage.create(new)
        rb.add("remove the partly restored root", lambda: eng.storage.delete(new))
        progress(2, f"restoring {Path(path).name} as VE {target}")
        _, manifest, conf_bytes = _extract(eng, f, path, stage, progress)
        conf = _restored_conf(eng, target, conf_bytes, info)
        if existing:
            old_conf = eng.config(target)
            if target != info["ctid"]:  # another VE's backup: this VE keeps its own addresses
                conf.values.update({k: v for k, v in old_conf.values.items() if roots.is_unique_key(k)})
            was_running = eng.is_running(target)
            if was_running:
                progress(80, f"stopping VE {target} to replace it")
                eng._stop(old_conf, None, False, lambda p, m: progress(80 + p // 20, m))
                rb.add("start the old VE again", lambda: eng._start(old_conf, _quiet))
            old = roots.swap_root(eng, target, new, rb)
            old_text = old_conf.path.read_text()

            def put_back_config() -> None:
                old_conf.path.write_text(old_text)
                eng._write_lxc_config(old_conf)

            rb.add("put the old config back", put_back_config)
            conf.save()
            eng._write_lxc_config(conf)
            eng._fail_point("restore:after-swap")
            if was_running:
                progress(90, f"starting VE {target} again")
                eng._start(conf, lambda p, m: progress(90 + p // 20, m))
            rb.commit()
            eng.storage.delete(old)
            if images.discard(eng, target):
                progress(95, f"discarded VE {target}'s suspended state: it belonged to the replaced files")
        else:
            os.rename(new, private)
            rb.add("take the restored root out again", lambda: os.rename(private, new))
            conf.save()
            rb.add("remove the config", lambda: conf.path.unlink(missing_ok=True))
            eng._write_lxc_config(conf)
            rb.add("remove the LXC config", lambda: eng.lxc.remove_config(target))
            eng._fail_point("restore:after-config")
            rb.commit()
        shutil.rmtree(stage, ignore_errors=True)
    progress(100, f"VE {target} restored from {Path(path).name} ({manifest['files']} files, "
                  f"taken {manifest['created']})")
    return eng._info(conf)


def _extract(eng: Engine, f: BinaryIO, path: str, stage: Path, progress: Progress) -> tuple[dict, dict, bytes]:
    """Stream the archive through the scanner (checksums) and the filter (safety) into tar -x."""
    with archive.SafeExtract(stage, b"root", eng.layout.idmap, f"backup {Path(path).name}",
                             "nothing was restored", members=["root"], passthrough=_OURS_RE) as ex:
        result = _scan(f, path, sink=ex.feed, progress=lambda p, m: progress(5 + p * 7 // 10, m),
                       what="restored")
        ex.finish()
    if ex.left_out:
        progress(76, archive.left_out_message(ex.left_out))
    return result


def _restored_conf(eng: Engine, target: int, conf_bytes: bytes, info: dict) -> VEConfig:
    with tempfile.NamedTemporaryFile("wb", suffix=".conf") as tmp:
        tmp.write(conf_bytes)
        tmp.flush()
        values = read_kv(Path(tmp.name))
    if target != info.get("ctid"):
        values = {k: v for k, v in values.items() if not roots.is_unique_key(k)}
    conf = VEConfig(ctid=target, path=eng.layout.conf(target), values=values)
    if not conf.ostemplate:
        raise BadArchive("the backup's VE config names no OS template")
    return conf
