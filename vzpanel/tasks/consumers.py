"""Websockets that push task progress; same permission rule as the pages (unknown = close 4404)."""

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from vzpanel.ves.access import find_task, find_ve

NOT_FOUND = 4404  # the websocket's 404: the handshake is refused, as if nothing were there


class WatchConsumer(AsyncJsonWebsocketConsumer):
    groups_joined: list[str]

    async def connect(self):
        self.groups_joined = []
        snapshot = await self.authorise()
        if snapshot is None:
            await self.close(code=NOT_FOUND)
            return
        for group in self.groups_joined:
            await self.channel_layer.group_add(group, self.channel_name)
        await self.accept()
        # Read again after joining, so no update falls between the snapshot and the group.
        await self.send_json(await self.snapshot())

    async def disconnect(self, code):
        for group in self.groups_joined:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def task_update(self, event):
        await self.send_json({"type": "task", "task": event["data"]})

    async def ve_update(self, event):
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
        self.groups_joined = [task.group_name]
        return True

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
        self.ctid = ve.ctid
        self.groups_joined = [ve.group_name]
        return True

    @database_sync_to_async
    def snapshot(self):
        ve = find_ve(self.scope["user"], self.ctid)
        if ve is None:
            return {"type": "gone"}
        tasks = [t.to_event(with_log=True) for t in ve.tasks.filter(status__in=("queued", "running"))]
        return {"type": "ve", "ve": {"ctid": ve.ctid, "status": ve.status}, "tasks": tasks, "snapshot": True}
