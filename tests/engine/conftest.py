from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.fixture
def cli(vz_root):
    """Run vzctl or vzlist against the test root; return the finished process."""

    def run(tool: str, *args: str, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / tool), "--root", str(vz_root), *args], capture_output=True, text=True,
                              input=input, timeout=timeout)

    return run


def root_tree(root: Path) -> list[str]:
    """A listing of what an engine root holds (configs, LXC dirs, VE roots), to prove nothing changed."""
    out = []
    for sub in ("conf", "lxc", "pool/private", "pool/snapshots"):
        d = root / sub
        if d.is_dir():
            out += sorted(f"{sub}/{p.name}" for p in d.iterdir())
    return out


@contextlib.contextmanager
def running_tiny_ves(eng, ids, addresses: dict[str, list[str]]):
    """Create and start a tiny VE per name with its addresses; yield {name: ctid}; destroy every one made
    afterwards, even when a create or a start fails half-way."""
    ves, made = {}, []
    try:
        for name, ipadd in addresses.items():
            ctid = next(ids)
            made.append(ctid)
            eng.create(ctid, "tiny", ipadd=ipadd)
            eng.start(ctid, wait_boot=True)
            ves[name] = ctid
        yield ves
    finally:
        for ctid in made:
            with contextlib.suppress(Exception):
                if eng.exists(ctid):
                    eng.destroy(ctid)
