"""Websockets that push task progress; same permission rule as the pages (unknown = close 4404).

Access is checked again every ``settings.CONSOLE_RECHECK`` seconds while a socket is open (the user
re-read from the database, then the pages' rule): a user who may no longer see the task or VE (it was
given away or destroyed, the account was disabled, a student left the course) is told so and the
socket closes with 4404, as for an outsider.
"""

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.contrib.auth import get_user_model

from vzpanel.core.websocket import AccessRecheck
from vzpanel.ves.access import find_task, find_ve

NOT_FOUND = 4404  # the websocket's 404: the handshake is refused, as if nothing were there


class WatchConsumer(AsyncJsonWebsocketConsumer):
    groups_joined: list[str]
    what = "it"

    async def connect(self):
        self.groups_joined = []
        self.recheck = None
        self.closed = False
        snapshot = await self.authorise()
        if snapshot is None:
            await self.close(code=NOT_FOUND)
            return
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        self.recheck = AccessRecheck(self.still_allowed, self.access_gone, self.what)
        self.recheck.start()
        # Read again after joining, so no update falls between the snapshot and the group.
        await self.send_json(await self.snapshot())

    async def disconnect(self, code):
        self.closed = True
        if self.recheck is not None:
            self.recheck.stop()
        for group in self.groups_joined:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def access_gone(self):
        """The user may no longer see this: stop the updates, say so, close as for an outsider."""
        if self.closed:
            return
        self.closed = True
        for group in self.groups_joined:
            await self.channel_layer.group_discard(group, self.channel_name)
        await self.send_json({"type": "gone", "message": f"You no longer have access to {self.what}."})
        await self.close(code=NOT_FOUND)

    @database_sync_to_async
    def still_allowed(self) -> bool:
        user = self.scope.get("user")
        user = get_user_model().objects.filter(pk=getattr(user, "pk", None), is_active=True).first()
        return user is not None and self.find(user) is not None

    async def task_update(self, event):
        if not self.closed:
            await self.send_json({"type": "task", "task": event["data"]})

    async def ve_update(self, event):
        if not self.closed:
            await self.send_json({"type": "ve", "ve": event["data"]})

    async def receive_json(self, content, **kwargs):
        pass  # watchers only listen


class TaskConsumer(WatchConsumer):
    """Live progress of one task: ws/tasks/<id>/."""

    @database_sync_to_async
    def authorise(self):
        task = find_task(self.scope["user"], self.scope["url_route"]["kwargs"]["task_id"])
        if task is None:
            return None
        self.task_id = task.pk
        self.what = f"task {task.pk}"
        self.groups_joined = [task.group_name]
        return True

    def find(self, user):
        return find_task(user, self.task_id)

    @database_sync_to_async
    def snapshot(self):
        task = find_task(self.scope["user"], self.task_id)
        return {"type": "task", "task": task.to_event(with_log=True), "snapshot": True}


class VEConsumer(WatchConsumer):
    """Live state of one VE and progress of its tasks: ws/ves/<ctid>/."""

    @database_sync_to_async
    def authorise(self):
        ve = find_ve(self.scope["user"], self.scope["url_route"]["kwargs"]["ctid"])
        if ve is None:
            return None
        self.ctid, self.ve_pk = ve.ctid, ve.pk
        self.what = f"VE {ve.ctid}"
        self.groups_joined = [ve.group_name]
        return True

    def find(self, user):
        ve = find_ve(user, self.ctid)
        return ve if ve is not None and ve.pk == self.ve_pk else None

    @database_sync_to_async
    def snapshot(self):
        ve = find_ve(self.scope["user"], self.ctid)
        if ve is None:
            return {"type": "gone"}
        tasks = [t.to_event(with_log=True) for t in ve.tasks.filter(status__in=("queued", "running"))]
        return {"type": "ve", "ve": {"ctid": ve.ctid, "status": ve.status}, "tasks": tasks, "snapshot": True}
