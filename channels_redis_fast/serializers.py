"""Message serializers: the same registry, classes and bytes as channels_redis 4.x.

A serialized message is ``random prefix + body``, where the body is the format's
bytes, wrapped in a Fernet token when ``symmetric_encryption_keys`` are set. The
prefix sits outside the token and keeps equal messages distinct members of a
Redis sorted set.
"""

from __future__ import annotations

import abc
import base64
import hashlib
import json
import logging
from typing import Any, Iterable

from .speedups import pack_message, random_prefix, unpack_message

logger = logging.getLogger(__name__)

#: Fernet keys derived from a secret shorter than this are easy to guess.
MIN_KEY_LENGTH = 32


class SerializerDoesNotExist(KeyError):
    """The requested serializer format is not registered."""


def _fernet_for(key: str | bytes) -> Any:
    from cryptography.fernet import Fernet

    raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    if len(raw) < MIN_KEY_LENGTH:
        logger.warning(
            "A symmetric_encryption_keys entry is only %d bytes long; use at least %d "
            "random bytes.",
            len(raw),
            MIN_KEY_LENGTH,
        )
    return Fernet(base64.urlsafe_b64encode(hashlib.sha256(raw).digest()))


def make_crypter(symmetric_encryption_keys: Iterable[str | bytes] | None) -> Any:
    """A MultiFernet over the keys (the first encrypts, all decrypt), or None."""
    if not symmetric_encryption_keys:
        return None
    if isinstance(symmetric_encryption_keys, (str, bytes)):
        raise ValueError("symmetric_encryption_keys must be a list of keys, not a single key")
    try:
        from cryptography.fernet import MultiFernet
    except ImportError:
        raise ValueError("Cannot run with encryption without 'cryptography' installed.")
    return MultiFernet([_fernet_for(key) for key in symmetric_encryption_keys])


class BaseMessageSerializer(abc.ABC):
    """Turns messages into prefixed, optionally encrypted bytes and back."""

    def __init__(
        self,
        symmetric_encryption_keys: Iterable[str | bytes] | None = None,
        random_prefix_length: int = 0,
        expiry: float | None = None,
    ) -> None:
        self.random_prefix_length = random_prefix_length
        self.expiry = expiry
        self.crypter = make_crypter(symmetric_encryption_keys)

    @abc.abstractmethod
    def as_bytes(self, message: Any, *args: Any, **kwargs: Any) -> bytes:
        raise NotImplementedError

    @abc.abstractmethod
    def from_bytes(self, message: bytes, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    @property
    def token_ttl(self) -> int | None:
        # Fernet checks token age in whole seconds; a little slack over the message
        # expiry, as channels_redis allows, so clock skew does not refuse live ones.
        return None if self.expiry is None else int(self.expiry + 10)

    def serialize(self, message: Any) -> bytes:
        body = self.as_bytes(message)
        if self.crypter is not None:
            body = self.crypter.encrypt(body)
        if self.random_prefix_length > 0:
            return random_prefix(self.random_prefix_length) + body
        return body

    def deserialize(self, message: bytes) -> Any:
        if self.random_prefix_length > 0:
            message = message[self.random_prefix_length :]
        if self.crypter is not None:
            message = self.crypter.decrypt(message, self.token_ttl)
        return self.from_bytes(message)


class JSONSerializer(BaseMessageSerializer):
    """JSON bodies (no bytes values)."""

    def as_bytes(self, message: Any, *args: Any, **kwargs: Any) -> bytes:
        return json.dumps(message).encode("utf-8")

    def from_bytes(self, message: bytes, *args: Any, **kwargs: Any) -> Any:
        return json.loads(message)


class MsgPackSerializer(BaseMessageSerializer):
    """msgpack bodies, packed and unpacked by the compiled hot path when it is active."""

    def as_bytes(self, message: Any, *args: Any, **kwargs: Any) -> bytes:
        return pack_message(message, 0)

    def from_bytes(self, message: bytes, *args: Any, **kwargs: Any) -> Any:
        return unpack_message(message, 0)

    def serialize(self, message: Any) -> bytes:
        if self.crypter is None:
            return pack_message(message, self.random_prefix_length)
        return super().serialize(message)

    def deserialize(self, message: bytes) -> Any:
        if self.crypter is None:
            return unpack_message(message, self.random_prefix_length)
        return super().deserialize(message)


class SerializersRegistry:
    """Serializer classes by format name; ``get_serializer`` makes instances."""

    def __init__(self) -> None:
        self._registry: dict[Any, type] = {}

    def register_serializer(self, format: Any, serializer_class: type) -> None:
        acceptable = isinstance(serializer_class, type) and (
            issubclass(serializer_class, BaseMessageSerializer)
            or (hasattr(serializer_class, "serialize") and hasattr(serializer_class, "deserialize"))
        )
        if not acceptable:
            # AssertionError, as channels_redis raises, but explicit so that it also
            # holds under ``python -O``.
            raise AssertionError(
                "serializer_class must implement serialize() and deserialize(), or "
                "subclass channels_redis_fast.serializers.BaseMessageSerializer"
            )
        self._registry[format] = serializer_class

    def get_serializer(self, format: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            serializer_class = self._registry[format]
        except KeyError:
            raise SerializerDoesNotExist(format)
        return serializer_class(*args, **kwargs)


registry = SerializersRegistry()
registry.register_serializer("json", JSONSerializer)
registry.register_serializer("msgpack", MsgPackSerializer)
