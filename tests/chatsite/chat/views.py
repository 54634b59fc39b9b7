"""Plain (sync) Django views: the chat page, a health check, and a server-side broadcast."""

import os

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.http import HttpResponseBadRequest, JsonResponse
from django.shortcuts import render

from chat.consumers import SERVER_NAME, room_group


def index(request):
    return render(request, "chat/index.html", {"server": SERVER_NAME})


def health(request):
    return JsonResponse({"ok": True, "server": SERVER_NAME, "pid": os.getpid()})


def broadcast(request):
    """GET /broadcast/?room=R&n=N&text=T: N group_sends from sync code via async_to_sync."""
    try:
        count = int(request.GET.get("n", "1"))
    except ValueError:
        return HttpResponseBadRequest("n must be an integer")
    room = request.GET.get("room", "lobby")
    text = request.GET.get("text", "broadcast")
    layer = get_channel_layer()
    send = async_to_sync(layer.group_send)
    for i in range(count):
        send(room_group(room), {"type": "chat.message", "message": f"{text} {i}", "server": SERVER_NAME})
    return JsonResponse({"sent": count, "layer": f"{type(layer).__module__}.{type(layer).__name__}"})
