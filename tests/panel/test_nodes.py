"""Many nodes from one panel: joining a node with its own Redis credentials, and taking it away again.

A joined node's agent reaches the panel's Redis over TLS on an address other than 127.0.0.1, with its own ACL
user that serve keeps across restarts; its credentials are refused on every other node's keys, for real.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
import redis

from tests.panel.conftest import REPO, free_port, make_ve
from tests.panel.test_privilege_split import NODE, Panel, state_top
from vzpanel.agent import protocol
from vzpanel.nodes.management.commands.node import CA_ON_NODE

NEW = "node2"


def manage(state, *args) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_") and k != "DATABASE_URL"}
    env.update(VZPANEL_STATE=str(state), DJANGO_SETTINGS_MODULE="vzpanel.settings", VZPANEL_NODE=NODE)
    return subprocess.run([sys.executable, str(REPO / "manage.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def node_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=10)


def panel_client(state) -> redis.Redis:
    password = (state / "secrets" / "redis-panel").read_text().strip()
    return redis.Redis(unix_socket_path=str(state / "run" / "redis" / "redis.sock"), username="panel",
                       password=password)


@pytest.mark.root
def test_a_joined_node_reaches_its_own_keys_over_tls_and_nothing_else(vz_root, monkeypatch):
    top = state_top()
    panel = Panel(top / "state", vz_root)
    try:
        panel.start()
        panel.stop()
        port = free_port()
        refused = manage(panel.state, "node", "add", "Bad_Name")
        assert refused.returncode != 0 and "not a node name" in refused.stderr
        added = manage(panel.state, "node", "add", NEW, "--redis-host", "127.0.0.2", "--redis-port", str(port))
        assert added.returncode == 0, added.stderr
        assert f"node {NEW} added" in added.stdout
        url = re.search(r"VZPANEL_AGENT_REDIS_URL='([^']+)'", added.stdout).group(1)
        assert url.startswith("rediss://") and f"--node {NEW}" in added.stdout
        url = url.replace(CA_ON_NODE, str(panel.state / "redis-tls" / "cert.pem"))

        monkeypatch.setenv("VZPANEL_REDIS_LISTEN", f"127.0.0.2:{port}")
        for _restart in range(2):  # the node's user survives a restart of serve
            panel.start()
            check_node_credentials(panel.state, url)
            panel.stop()

        removed = manage(panel.state, "node", "remove", NEW)
        assert removed.returncode == 0, removed.stderr
        assert not (panel.state / "secrets" / f"redis-agent-{NEW}").exists()
        panel.start()
        with pytest.raises(redis.AuthenticationError):
            node_client(url).ping()
        assert manage(panel.state, "node", "remove", NEW).returncode != 0  # no such node any more
    finally:
        panel.stop()
        shutil.rmtree(top, ignore_errors=True)


def check_node_credentials(state, url):
    """The new node's user works on its own keys; on the local node's it is refused, and they stay as they were."""
    plain = redis.Redis(host="127.0.0.2", port=int(url.rsplit(":", 1)[1].split("/")[0]), socket_timeout=5)
    with pytest.raises(redis.ConnectionError):
        plain.ping()  # TLS only on the node port
    own = node_client(url)
    assert own.ping()
    own.lpush(protocol.requests_key(NEW), "probe")
    assert own.rpop(protocol.requests_key(NEW)) == b"probe"
    victim = panel_client(state)
    reply = protocol.reply_key(NODE, "nodes-test")  # a reply of the local node's agent, waiting for the panel
    victim.lpush(reply, "genuine")
    try:
        for attack in (lambda: own.lpush(protocol.requests_key(NODE), "forged"),
                       lambda: own.blpop([protocol.requests_key(NODE)], timeout=1),
                       lambda: own.lpush(reply, "forged reply"),
                       lambda: own.blpop([reply], timeout=1),
                       lambda: own.set(protocol.alive_key(NODE), "1"),
                       lambda: own.keys("*"),
                       lambda: own.scan(0),
                       own.flushall,
                       lambda: own.config_get("*")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                attack()
        assert victim.lrange(reply, 0, -1) == [b"genuine"]
    finally:
        victim.delete(reply)


@pytest.mark.django_db
def test_removing_a_node_is_refused_while_it_holds_ves_and_changes_nothing(owner):
    from django.core.management import CommandError, call_command

    from vzpanel.nodes.models import Node

    node = Node.objects.create(name=NEW)
    make_ve(owner, node, 4242)
    with pytest.raises(CommandError, match=r"still holds 1 VE\(s\)"):
        call_command("node", "unregister", NEW)
    assert Node.objects.filter(name=NEW).exists() and node.ves.count() == 1
