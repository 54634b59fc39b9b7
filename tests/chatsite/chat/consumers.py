"""The chat consumer: one group per room; whatever a client sends goes to the whole room."""

import os

from channels.generic.websocket import AsyncJsonWebsocketConsumer

SERVER_NAME = os.environ.get("CRF_CHAT_SERVER_NAME", "chat")


def room_group(room: str) -> str:
    return f"chat_{room}"


class ChatConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        self.group = room_group(self.scope["url_route"]["kwargs"]["room"])
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        # Tell the client it is in the group, so it knows when sending to it is safe.
        await self.send_json({"type": "joined", "server": SERVER_NAME, "channel": self.channel_name})

    async def disconnect(self, code):
        if getattr(self, "group", None):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive_json(self, content, **kwargs):
        text = content.get("message") if isinstance(content, dict) else None
        if not isinstance(text, str):
            await self.send_json({"type": "error", "error": "send {\"message\": \"...\"}"})
            return
        await self.channel_layer.group_send(
            self.group,
            {"type": "chat.message", "message": text, "server": SERVER_NAME},
        )

    async def chat_message(self, event):
        await self.send_json({"type": "message", "message": event["message"], "server": event["server"]})
