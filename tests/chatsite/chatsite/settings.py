"""Settings of the end-to-end chat site.

The channel layer is configured only through ``CHANNEL_LAYERS``.  The test harness picks the
Redis server and the backend with two environment variables:

``CRF_CHAT_REDIS_URL``  the Redis URL (required; the tests start a private server)
``CRF_CHAT_BACKEND``    ``fast`` (default: channels_redis_fast) or ``stock`` (channels_redis 4.3)
``CRF_CHAT_LOCAL_DELIVERY``  ``0`` turns channels_redis_fast's in-process delivery off
"""

import os

DEBUG = False
SECRET_KEY = "chatsite-e2e-tests-only"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "chatsite.urls"
ASGI_APPLICATION = "chatsite.asgi.application"
USE_TZ = True

INSTALLED_APPS = [
    "daphne",
    "channels",
    "chat",
]
MIDDLEWARE = []
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {},
    }
]
DATABASES = {}
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}

REDIS_URL = os.environ["CRF_CHAT_REDIS_URL"]

if os.environ.get("CRF_CHAT_BACKEND", "fast") == "stock":
    # channels_redis 4.3, for comparison.  redis-py 8 needs an explicit socket_timeout
    # (channels_redis issue 422), hence the host dict.
    _BACKEND = "channels_redis.core.RedisChannelLayer"
    _HOST = {"address": REDIS_URL, "socket_timeout": None}
else:
    _BACKEND = "channels_redis_fast.core.RedisChannelLayer"
    _HOST = REDIS_URL

_CONFIG: dict = {"hosts": [_HOST]}
if os.environ.get("CRF_CHAT_LOCAL_DELIVERY") == "0":
    _CONFIG["local_delivery"] = False

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": _BACKEND,
        "CONFIG": _CONFIG,
        # channels.layers.channel_layers.make_test_backend("default") builds this one.
        "TEST_CONFIG": {"hosts": [_HOST], "prefix": "chattest", "expiry": 30},
    }
}
