"""A task worker that serves every node's queue, and follows the node list while it runs.

The panel's task workers (the web user; `serve` starts them as `manage.py rqworker --worker-class
vzpanel.tasks.nodeworker.NodesWorker node:<its own node>`) run the jobs of every node: a job only reaches
its node through that node's agent (vzpanel.agent.client), so one pool of workers on the panel host serves
them all. A node joined while the workers run (`manage.py node add`, the Add node page) gets its queue
served within RESCAN seconds: between two waits for a job the worker reads the node list again and listens
on the queues it names. RQ waits on several lists at once (one BLPOP), so more nodes cost no more round trips.
"""

from __future__ import annotations

import logging

from rq import Worker, worker_registration

log = logging.getLogger(__name__)

RESCAN = 10  # seconds an idle worker waits for a job before it reads the node list again


def node_queue_names() -> list[str]:
    """The queue of every node the panel knows, the local node's first (it also runs the periodic rounds)."""
    from django.conf import settings

    from vzpanel.nodes.models import Node

    names = [f"node:{settings.VZPANEL_NODE}"]
    names += [f"node:{n}" for n in Node.objects.order_by("name").values_list("name", flat=True)
              if n != settings.VZPANEL_NODE]
    return names


class NodesWorker(Worker):
    """An RQ worker on every node's queue; it picks up nodes that join (and drops removed ones) as it runs."""

    def follow_nodes(self) -> None:
        """Listen on the queues of the nodes the database names now, if they differ from the current ones."""
        from django.db import connections

        try:
            wanted = node_queue_names()
        except Exception:  # the database is away for a moment: keep serving the queues we have
            log.warning("cannot read the node list; still serving %s", self.queue_names(), exc_info=True)
            return
        finally:
            # Never hold a connection across a fork: each job runs in a forked work-horse, which would share
            # (and, when it ends, close) this process's connection under the next job.
            connections.close_all()
        if wanted == self.queue_names():
            return
        with self.connection.pipeline() as pipe:
            worker_registration.unregister(self, pipe)
            self.queues = [self.queue_class(name, connection=self.connection, job_class=self.job_class,
                                            serializer=self.serializer) for name in wanted]
            self._ordered_queues = self.queues[:]
            worker_registration.register(self, pipe)
            pipe.hset(self.key, "queues", ",".join(wanted))
            pipe.execute()
        log.info("worker %s now serves %s", self.name, ", ".join(wanted))

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        """Wait for a job on every node's queue, reading the node list again every RESCAN seconds."""
        if timeout is None or max_idle_time is not None:  # burst mode, or an idle limit of the caller's own
            self.follow_nodes()
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        while True:
            self.follow_nodes()
            # With an idle limit of RESCAN, RQ returns None when no job came in that time: read the list again.
            result = super().dequeue_job_and_maintain_ttl(min(timeout, RESCAN), RESCAN)
            if result is not None or self._stop_requested:
                return result
