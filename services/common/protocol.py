"""Typed messages on the wire: ``{"msgType": ..., "content": {...}}`` as msgpack.

Each message is a frozen Struct; a channel's protocol is the set of its message types. The
envelope around each one is generated here, so the whole union decodes in one typed pass.
"""

from __future__ import annotations

from typing import Any, ClassVar, Union

import msgspec

from .errors import BadRequest, FumError, UnknownMessage


class Message(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """Base of every message. ``msg_type`` is the class name in lowerCamel case."""

    msg_type: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.msg_type = cls.__name__[0].lower() + cls.__name__[1:]


class Error(Message, frozen=True):
    """The reply to a request that failed: a stable code and a human message."""

    code: str
    message: str


class _LooseEnvelope(msgspec.Struct):
    msgType: str = ""
    content: msgspec.Raw = msgspec.Raw(b"")


class Protocol:
    """The codec of one channel: encodes any of its messages, decodes to the exact type."""

    def __init__(self, name: str, *messages: type[Message]) -> None:
        self.name = name
        self.messages: tuple[type[Message], ...] = (*messages, Error)
        self._envelopes: dict[type[Message], type[msgspec.Struct]] = {
            m: msgspec.defstruct(
                f"{m.__name__}Envelope",
                [("content", m)],
                tag=m.msg_type,
                tag_field="msgType",
                frozen=True,
            )
            for m in self.messages
        }
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(Union[tuple(self._envelopes.values())])  # noqa: UP007
        self._loose = msgspec.msgpack.Decoder(_LooseEnvelope)

    def encode(self, message: Message) -> bytes:
        return self._encoder.encode(self._envelopes[type(message)](message))

    def decode(self, data: bytes) -> Message:
        """Decode one message; raise ``UnknownMessage`` or ``BadRequest`` saying why not."""
        try:
            return self._decoder.decode(data).content
        except msgspec.ValidationError as exc:
            kind = self._msg_type_of(data)
            if kind is not None and kind not in {m.msg_type for m in self.messages}:
                raise UnknownMessage(f"{self.name}: unknown msgType {kind!r}") from None
            raise BadRequest(f"{self.name}: malformed {kind or 'message'}: {exc}") from None
        except msgspec.DecodeError as exc:
            raise BadRequest(f"{self.name}: undecodable message: {exc}") from None

    def _msg_type_of(self, data: bytes) -> str | None:
        try:
            return self._loose.decode(data).msgType or None
        except msgspec.MsgspecError:
            return None

    @staticmethod
    def error(exc: BaseException) -> Error:
        """The ``Error`` reply for an exception: its own code, or ``internal``."""
        if isinstance(exc, FumError):
            return Error(code=exc.code, message=exc.message)
        return Error(code="internal", message=f"{type(exc).__name__}: {exc}")
