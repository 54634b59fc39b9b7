"""group_send from plain sync code: ``manage.py chat_broadcast --room lobby -n 200 [--hold]``.

Every call goes through ``async_to_sync``, so each one runs on a fresh event loop.  Prints one
JSON line when done; with ``--hold`` it then waits for a line on stdin before exiting, so a
test can look at Redis's client list while this process is still alive.
"""

import json
import sys
import time

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.core.management.base import BaseCommand

from chat.consumers import room_group


class Command(BaseCommand):
    help = "Send N chat messages to a room with async_to_sync(channel_layer.group_send)."

    def add_arguments(self, parser):
        parser.add_argument("--room", default="lobby")
        parser.add_argument("-n", type=int, default=1)
        parser.add_argument("--text", default="from-command")
        parser.add_argument("--hold", action="store_true")

    def handle(self, *args, room, n, text, hold, **options):
        layer = get_channel_layer()
        started = time.perf_counter()
        for i in range(n):
            async_to_sync(layer.group_send)(
                room_group(room), {"type": "chat.message", "message": f"{text} {i}", "server": "command"}
            )
        elapsed = time.perf_counter() - started
        sys.stdout.write(json.dumps({"sent": n, "seconds": round(elapsed, 3)}) + "\n")
        sys.stdout.flush()
        if hold:
            sys.stdin.readline()
