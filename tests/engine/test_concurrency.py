"""One operation at a time per VE: the second one is told so, or waits when asked to."""

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vzengine import Busy, Engine
from vzengine.lock import ve_lock

pytestmark = pytest.mark.root
VZCTL = str(Path(sys.executable).parent / "vzctl")


def test_a_second_operation_on_a_busy_ve_fails_with_a_clear_message(cli, engine, new_ctid):
    ctid = new_ctid()
    engine.create(ctid, "tiny")
    with ve_lock(engine.layout.lockdir, ctid, "backup"):
        r = cli("vzctl", "start", str(ctid))
        assert r.returncode == 6
        assert r.stderr.strip() == f"vzctl: VE {ctid} is busy: backup (pid {__import__('os').getpid()}) is in progress; try again when it ends"
        with pytest.raises(Busy):
            Engine(engine.layout.root).start(ctid)
    assert not engine.is_running(ctid)


def test_a_waiting_operation_runs_once_the_lock_is_free(cli, engine, new_ctid):
    ctid = new_ctid()
    engine.create(ctid, "tiny")
    release = threading.Event()

    def hold():
        with ve_lock(engine.layout.lockdir, ctid, "snapshot"):
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    time.sleep(0.2)
    proc = subprocess.Popen([VZCTL, "--root", str(engine.layout.root), "--wait-lock", "20", "start", str(ctid)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    assert proc.poll() is None  # still waiting for the lock
    release.set()
    t.join()
    assert proc.wait(timeout=30) == 0
    assert engine.is_running(ctid)


def test_two_concurrent_starts_start_the_ve_once(engine, new_ctid, vz_root):
    ctid = new_ctid()
    engine.create(ctid, "tiny")
    procs = [subprocess.Popen([VZCTL, "--root", str(vz_root), "-q", "start", str(ctid)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=60), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes[0] == 0 and codes[1] in (5, 6), results  # the other: "already running" or "busy"
    assert engine.is_running(ctid)
    assert engine.nproc(ctid) >= 1
