"""Bad input gets a one-line error, a non-zero exit, and changes nothing."""

import pytest

from tests.engine.conftest import root_tree

pytestmark = pytest.mark.root


@pytest.fixture
def stopped_ve(engine, new_ctid):
    ctid = new_ctid()
    engine.create(ctid, "tiny")
    return ctid


CASES = [
    (["create", "abc", "--ostemplate", "tiny"], 2, "invalid VE id 'abc'"),
    (["create", "42", "--ostemplate", "tiny"], 2, "invalid VE id 42"),
    (["create", "{free}", "--ostemplate", "no-such"], 3, "unknown OS template 'no-such'"),
    (["create", "{free}", "--ostemplate", "../../etc"], 2, "invalid template name"),
    (["create", "{free}", "--ostemplate", "tiny", "--hostname", "bad_name!"], 2, "invalid hostname"),
    (["create", "{free}", "--ostemplate", "tiny", "--userpasswd", "root"], 2, "USER:PASSWORD"),
    (["create", "{free}", "--ostemplate", "tiny", "--nameserver", "1.2.3"], 2, "invalid name server"),
    (["create", "{ve}", "--ostemplate", "tiny"], 4, "VE {ve} already exists"),
    (["start", "{free}"], 3, "VE {free} does not exist"),
    (["stop", "{ve}"], 5, "VE {ve} is not running"),
    (["exec", "{ve}", "true"], 5, "VE {ve} is not running"),
    (["enter", "{ve}"], 5, "VE {ve} is not running"),
    (["destroy", "{free}"], 3, "VE {free} does not exist"),
    (["set", "{ve}", "--hostname=-x"], 2, "invalid hostname"),
    (["set", "{ve}", "--bogus"], 2, "unrecognized arguments"),
    (["set", "{ve}", "--hostname", "ok"], 2, "only --save can change it"),
    (["set", "{ve}"], 2, "at least one parameter"),
    (["template", "build", "Nope"], 2, "invalid template name"),
    (["template", "remove", "never-built"], 3, "neither built nor imported"),
]


@pytest.mark.parametrize(("args", "code", "message"), CASES, ids=[" ".join(c[0][:2]) + f"-{i}" for i, c in enumerate(CASES)])
def test_it_refuses_bad_input_and_changes_nothing(cli, vz_root, stopped_ve, new_ctid, args, code, message):
    free = new_ctid()
    fill = {"ve": stopped_ve, "free": free}
    args = [a.format(**fill) for a in args]
    before = root_tree(vz_root)
    conf_before = (vz_root / f"conf/{stopped_ve}.conf").read_text()
    r = cli("vzctl", *args)
    assert r.returncode == code, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vzctl: "), r.stderr
    assert message.format(**fill) in lines[0]
    assert root_tree(vz_root) == before
    assert (vz_root / f"conf/{stopped_ve}.conf").read_text() == conf_before


def test_vzlist_refuses_an_unknown_field(cli):
    r = cli("vzlist", "-o", "ctid,bogus")
    assert r.returncode == 2 and "unknown field 'bogus'" in r.stderr
