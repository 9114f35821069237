"""A VE prepared by a teacher becomes a template; VEs made from it have its files, not its identity."""

import pytest

pytestmark = pytest.mark.root


def test_a_saved_ve_becomes_a_template_for_new_ves(cli, engine, new_ctid, vz_root):
    golden = new_ctid()
    engine.create(golden, "tiny", hostname="golden")
    engine.start(golden, wait_boot=True)
    engine.exec(golden, "echo lab-1 > /root/marker")
    r = cli("vzctl", "template", "save", str(golden), "lab1-golden", "--description", "Lab 1")
    assert r.returncode == 0, r.stderr
    listed = {ln.split()[0]: ln for ln in cli("vzctl", "template", "list").stdout.splitlines()[1:]}
    assert "lab1-golden" in listed and "Lab 1" in listed["lab1-golden"]

    student = new_ctid()
    r = cli("vzctl", "create", str(student), "--ostemplate", "lab1-golden", "--hostname", "student1")
    assert r.returncode == 0, r.stderr
    engine.start(student, wait_boot=True)
    assert engine.exec(student, "cat /root/marker").stdout == "lab-1\n"
    assert engine.exec(student, "hostname").stdout.strip() == "student1"
    ids = {c: (vz_root / f"pool/private/{c}/etc/machine-id").read_text() for c in (golden, student)}
    assert ids[golden] != ids[student] and len(ids[student].strip()) == 32

    r = cli("vzctl", "template", "save", str(golden), "lab1-golden")
    assert r.returncode == 4 and "already exists" in r.stderr
    r = cli("vzctl", "template", "save", str(golden), "tiny")
    assert r.returncode == 2 and "built-in" in r.stderr
    engine.destroy(student)
    assert cli("vzctl", "template", "remove", "lab1-golden").returncode == 0
    assert not (vz_root / "pool/templates/lab1-golden").exists()
