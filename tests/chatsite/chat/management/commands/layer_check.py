"""Checks of the ``channels.layers`` plumbing, printed as one JSON line.

``get_channel_layer()`` must build the configured backend from ``CHANNEL_LAYERS`` and cache
it; ``channel_layers.make_test_backend("default")`` must build one from ``TEST_CONFIG``; both
must carry a message from ``send`` to ``receive``.
"""

import json

from asgiref.sync import async_to_sync
from channels.layers import channel_layers, get_channel_layer
from django.core.management.base import BaseCommand


async def _roundtrip(layer, payload):
    channel = await layer.new_channel()
    await layer.send(channel, {"type": "check.message", "payload": payload})
    message = await layer.receive(channel)
    return message == {"type": "check.message", "payload": payload}


class Command(BaseCommand):
    help = "Exercise get_channel_layer() and make_test_backend() and print the results as JSON."

    def handle(self, *args, **options):
        layer = get_channel_layer()
        test_layer = channel_layers.make_test_backend("default")
        result = {
            "class": f"{type(layer).__module__}.{type(layer).__name__}",
            "cached": get_channel_layer() is layer,
            "prefix": layer.prefix,
            "expiry": layer.expiry,
            "roundtrip": async_to_sync(_roundtrip)(layer, "hello"),
            "test_class": f"{type(test_layer).__module__}.{type(test_layer).__name__}",
            "test_prefix": test_layer.prefix,
            "test_expiry": test_layer.expiry,
            "test_is_new": test_layer is not layer,
            "test_roundtrip": async_to_sync(_roundtrip)(test_layer, "hi"),
        }
        self.stdout.write(json.dumps(result))
