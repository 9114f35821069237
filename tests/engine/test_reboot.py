"""reboot inside a VE brings it back; poweroff leaves it stopped."""

import time

import pytest

pytestmark = pytest.mark.root


def _wait(cond, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("template", ["tiny", pytest.param("debian-12", marks=pytest.mark.slow)])
def test_reboot_inside_brings_the_ve_back(engine, new_ctid, template):
    ctid = new_ctid()
    engine.create(ctid, template)
    engine.start(ctid, wait_boot=True)
    engine.exec(ctid, "echo marker > /root/kept")
    first = engine.lxc.init_pid(ctid)
    engine.exec(ctid, "reboot")
    assert _wait(lambda: engine.lxc.init_pid(ctid) not in (None, first)), "the VE did not come back"
    engine.wait_booted(ctid, timeout=60)
    assert engine.exec(ctid, "cat /root/kept").stdout.strip() == "marker"


def test_poweroff_inside_leaves_the_ve_stopped(engine, tiny_ve):
    engine.exec(tiny_ve, "poweroff")
    assert _wait(lambda: not engine.is_running(tiny_ve))
    time.sleep(1)
    assert not engine.is_running(tiny_ve)
    engine.start(tiny_ve)  # and it starts again cleanly
    assert engine.is_running(tiny_ve)
