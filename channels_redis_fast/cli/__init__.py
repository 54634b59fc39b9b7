"""The operator commands behind ``python -m channels_redis_fast``: ``stats`` (top.py) and
``check`` (check.py). They talk to Redis synchronously through redis-py and are never
imported by the layers.
"""
