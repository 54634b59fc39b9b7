"""Message serializers: the same registry, classes and bytes as channels_redis 4.x.

A serialized message is ``random prefix + body``, where the body is the format's
bytes, wrapped in a Fernet token when ``symmetric_encryption_keys`` are set. The
prefix sits outside the token and keeps equal messages distinct members of a
Redis sorted set.
"""

from __future__ import annotations

import abc
import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import threading
import time
from typing import Any, Iterable, Protocol

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


def _derive_key(key: str | bytes) -> bytes:
    raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    return hashlib.sha256(raw).digest()


# Fernet's own constants (the token format is fixed by its specification).
_VERSION = b"\x80"
_MAX_CLOCK_SKEW = 60
_MIN_TOKEN = 1 + 8 + 16 + 16 + 32  # version, time, IV, one AES block, HMAC
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_PADDING = [bytes([n]) * n for n in range(17)]


class FernetCodec:
    """Fernet tokens (the very bytes ``MultiFernet`` makes and reads), with less overhead.

    Most of a Fernet call is not the cryptography but its setup: a new AES-CBC context
    (~4 µs), a padder, an HMAC object, and per key a token parse and TTL check. Here:

    * decryption runs each key's one long-lived AES-ECB context over the ciphertext and
      XORs the result with ``IV + ciphertext[:-16]``, which is CBC decryption by its
      definition; it happens only after the HMAC (``hmac.digest``, compare in constant
      time) matched, so unauthenticated bytes are never decrypted;
    * encryption keeps one AES-CBC context running and folds each message's fresh random
      IV into its first block (CBC feeds the previous ciphertext block into the next one,
      so ``P1 ^ IV ^ previous`` comes out as ``E(P1 ^ IV)``): the token is exactly what a
      new ``CBC(IV)`` context would produce;
    * base64 is one ``binascii`` call plus a translate, PKCS7 is two slices, and the clock
      is read once per token.

    The first key encrypts; every key decrypts. Contexts are guarded by a lock, as the
    serializer may be shared by threads (``async_to_sync``).
    """

    __slots__ = ("_keys", "_signing_key", "_encryptor", "_previous", "_lock")

    def __init__(self, symmetric_encryption_keys: Iterable[str | bytes]) -> None:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        keys = list(symmetric_encryption_keys)
        self._keys = []
        for key in keys:
            derived = _derive_key(key)
            ecb = Cipher(algorithms.AES(derived[16:]), modes.ECB()).decryptor()
            self._keys.append((derived[:16], ecb))
        if not self._keys:
            raise ValueError("FernetCodec needs at least one key")
        first = _derive_key(keys[0])
        self._signing_key = first[:16]
        self._previous = bytes(16)
        self._encryptor = Cipher(algorithms.AES(first[16:]), modes.CBC(self._previous)).encryptor()
        self._lock = threading.Lock()

    def encrypt(self, data: bytes) -> bytes:
        iv = os.urandom(16)
        padded = data + _PADDING[16 - len(data) % 16]
        with self._lock:
            mask = int.from_bytes(iv, "big") ^ int.from_bytes(self._previous, "big")
            head = (int.from_bytes(padded[:16], "big") ^ mask).to_bytes(16, "big")
            ciphertext = self._encryptor.update(head + padded[16:])
            self._previous = ciphertext[-16:]
        parts = _VERSION + int(time.time()).to_bytes(8, "big") + iv + ciphertext
        token = parts + hmac.digest(self._signing_key, parts, "sha256")
        return binascii.b2a_base64(token, newline=False).translate(_TO_URLSAFE)

    def decrypt(self, token: bytes, ttl: int | None = None) -> bytes:
        try:
            data = binascii.a2b_base64(token.translate(_TO_STANDARD))
        except (TypeError, AttributeError, binascii.Error):
            raise _invalid_token()
        size = len(data)
        if size < _MIN_TOKEN or data[0] != 0x80 or (size - _MIN_TOKEN) % 16:
            raise _invalid_token()
        if ttl is not None:
            timestamp = int.from_bytes(data[1:9], "big")
            now = int(time.time())
            if timestamp + ttl < now or now + _MAX_CLOCK_SKEW < timestamp:
                raise _invalid_token()
        signed = data[:-32]
        signature = data[-32:]
        for signing_key, ecb in self._keys:
            if hmac.compare_digest(hmac.digest(signing_key, signed, "sha256"), signature):
                break
        else:
            raise _invalid_token()
        ciphertext = signed[25:]
        with self._lock:
            blocks = ecb.update(ciphertext)
        chain = signed[9:-16]  # IV + every ciphertext block but the last
        length = len(ciphertext)
        padded = (int.from_bytes(blocks, "big") ^ int.from_bytes(chain, "big")).to_bytes(length, "big")
        pad = padded[-1]
        if not 0 < pad <= 16 or padded[-pad:] != _PADDING[pad]:
            raise _invalid_token()
        return padded[:-pad]


def _invalid_token() -> Exception:
    from cryptography.fernet import InvalidToken

    return InvalidToken()


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
        # ``crypter`` stays a MultiFernet for code that uses it directly; the layer's own
        # path goes through the leaner codec, which reads and writes the same tokens.
        if symmetric_encryption_keys and not isinstance(symmetric_encryption_keys, (str, bytes)):
            symmetric_encryption_keys = list(symmetric_encryption_keys)
        self.crypter = make_crypter(symmetric_encryption_keys)
        self._codec = (
            FernetCodec(symmetric_encryption_keys)
            if self.crypter is not None and symmetric_encryption_keys
            else None
        )
        self._codec_for = self.crypter

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
            body = self._encrypt(body)
        if self.random_prefix_length > 0:
            return random_prefix(self.random_prefix_length) + body
        return body

    def deserialize(self, message: bytes) -> Any:
        if self.random_prefix_length > 0:
            message = message[self.random_prefix_length :]
        if self.crypter is not None:
            message = self._decrypt(message)
        return self.from_bytes(message)

    def _encrypt(self, body: bytes) -> bytes:
        if self.crypter is getattr(self, "_codec_for", None) and self._codec is not None:
            return self._codec.encrypt(body)
        token: bytes = self.crypter.encrypt(body)  # a crypter someone swapped in
        return token

    def _decrypt(self, token: bytes) -> bytes:
        if self.crypter is getattr(self, "_codec_for", None) and self._codec is not None:
            return self._codec.decrypt(token, self.token_ttl)
        body: bytes = self.crypter.decrypt(token, self.token_ttl)
        return body


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


class MessageSerializer(Protocol):
    """What a layer needs of a serializer (registered classes need not subclass anything)."""

    def serialize(self, message: Any) -> bytes: ...

    def deserialize(self, message: bytes) -> Any: ...


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

    def get_serializer(self, format: Any, *args: Any, **kwargs: Any) -> MessageSerializer:
        try:
            serializer_class = self._registry[format]
        except KeyError:
            raise SerializerDoesNotExist(format)
        serializer: MessageSerializer = serializer_class(*args, **kwargs)
        return serializer


registry = SerializersRegistry()
registry.register_serializer("json", JSONSerializer)
registry.register_serializer("msgpack", MsgPackSerializer)
