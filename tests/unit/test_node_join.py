"""A joined node's Redis user and the record of joined nodes (root's secrets directory)."""

import pytest

from vzpanel.nodes.join import JoinError, agent_acl_line, agent_command, joined_nodes


def test_each_nodes_acl_user_reaches_its_own_keys_and_no_keyless_command_that_reaches_all():
    line = agent_acl_line("node2", "ab" * 32)
    assert line.startswith("user agent-node2 on #" + "ab" * 32 + " resetkeys ~vz:agent:node2:* ")
    assert "~*" not in line and "-@admin -@dangerous -scan -randomkey" in line


@pytest.mark.parametrize("name", ["Node2", "-x", "a b", "x;flushall", "templates", "", "a" * 64, "n\nuser x"])
def test_names_no_agent_could_serve_are_refused(name):
    with pytest.raises(JoinError):
        agent_acl_line(name, "00")
    with pytest.raises(JoinError):
        agent_command(name, "rediss://x")


def test_joined_nodes_are_the_regular_secret_files_with_valid_names(tmp_path):
    (tmp_path / "redis-agent-b").write_text("x")
    (tmp_path / "redis-agent-a").write_text("x")
    (tmp_path / "redis-agent-Bad").write_text("x")
    (tmp_path / "redis-agent-link").symlink_to(tmp_path / "redis-agent-a")
    (tmp_path / "redis-panel").write_text("x")
    assert joined_nodes(tmp_path) == ["a", "b"]
