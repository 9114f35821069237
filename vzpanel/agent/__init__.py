"""The node agent: the one door from the panel to root on a node.

The panel's unprivileged processes (web server, task worker) send the agent requests as JSON over Redis
(`protocol`), through `client.RemoteEngine`. The agent (`server`, run as root on each node) takes only the
operations registered in `ops`, validates every parameter itself, derives every host path itself, and runs
them on the node's engine. Nothing it reads from Redis is unpickled, imported by name or passed to a shell,
and it never opens the panel's database.

`console` is the node's console daemon (``manage.py consoled``, root): terminals into VEs over the channel
layer. Only `ops`, `server` and `console` import vzengine: no other panel module does (a test checks);
`protocol`, `client` and `errors` are safe for the web process.
"""
