"""What the node agent takes: the request shape and each operation's parameters, checked before anything runs.
Pure logic, no root, no Redis (tests/panel/test_privilege_split.py sends the same against a real agent)."""

import json
import pickle

import pytest

from vzpanel.agent import protocol
from vzpanel.agent.ops import OPS, Invalid, check_params


def test_every_operation_says_what_it_does():
    assert OPS and all(o.doc for o in OPS.values())


@pytest.mark.parametrize("raw", [
    b"not json", pickle.dumps({"op": "ping"}), b"[]", json.dumps({"v": 1}).encode(),
    json.dumps({"v": 2, "id": "a" * 32, "op": "ping", "params": {}}).encode(),
    json.dumps({"v": 1, "id": "../../etc/passwd", "op": "ping", "params": {}}).encode(),
    json.dumps({"v": 1, "id": "a" * 32, "op": "os.system", "params": {}}).encode(),
    json.dumps({"v": 1, "id": "a" * 32, "op": "ping", "params": ["x"]}).encode(),
    b"{" + b" " * protocol.MAX_REQUEST_BYTES + b"}",
])
def test_it_refuses_requests_not_of_the_documented_shape(raw):
    with pytest.raises(protocol.BadRequest):
        protocol.decode_request(raw)


def test_a_well_formed_request_round_trips():
    rid, body = protocol.encode_request("start", {"ctid": 101}, "worker")
    assert protocol.decode_request(body) == {"v": 1, "id": rid, "op": "start", "params": {"ctid": 101},
                                             "sender": "worker"}


@pytest.mark.parametrize(("op", "params", "why"), [
    ("start", {}, "needs parameter 'ctid'"),
    ("start", {"ctid": "101"}, "whole number"),
    ("start", {"ctid": True}, "whole number"),
    ("start", {"ctid": 99}, "from 100"),
    ("start", {"ctid": 10**30}, "whole number"),
    ("start", {"ctid": 101, "directory": "/etc"}, "takes no parameter 'directory'"),
    ("restore", {"ctid": 101, "name": "../../etc/shadow"}, "not of the allowed form"),
    ("restore", {"ctid": 101, "name": "/etc/passwd"}, "not of the allowed form"),
    ("set", {"ctid": 101, "ram": "1G\nlxc.mount.entry = / x"}, "not of the allowed form"),
    ("set", {"ctid": 101, "hostname": "a" * 300}, "at most 253"),
    ("set", {"ctid": 101, "userpasswd": [["root:x", "pw"]]}, "userpasswd"),
    ("set", {"ctid": 101, "ipadd": ["10.0.0.1"] * 65}, "at most 64"),
    ("template_save", {"ctid": 101, "name": "debian-12", "replace": True}, "not of the allowed form"),
    ("template_remove", {"name": "tiny"}, "not of the allowed form"),
    ("sessions", {"ctids": list(range(100, 10101 + 100))}, "at most 10000"),
])
def test_it_refuses_parameters_that_fail_their_checks(op, params, why):
    with pytest.raises(Invalid, match=why.replace("(", r"\(")):
        check_params(OPS[op], params)


def test_it_passes_what_the_panel_sends():
    assert check_params(OPS["create"], {"ctid": 101, "ostemplate": "tiny", "ram": "512M", "cpus": 2,
                                        "ipadd": ["10.1.2.3"], "userpasswd": [["root", "s3cret pass"]]}) == {
        "ctid": 101, "ostemplate": "tiny", "ram": "512M", "cpus": "2", "ipadd": ["10.1.2.3"],
        "userpasswd": [("root", "s3cret pass")]}
    assert check_params(OPS["template_save"], {"ctid": 101, "name": "course7-v3"})["name"] == "course7-v3"
