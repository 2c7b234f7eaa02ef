"""Every message of every channel survives the wire, and bad input is told apart."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from services.common.db_protocol import DB_PROTOCOL, GetCall
from services.common.errors import BadRequest, NotFound, UnknownMessage
from services.common.node_protocol import NODE_PROTOCOL
from services.common.pool_protocol import POOL_PROTOCOL
from services.common.protocol import Error, Message, Protocol

PROTOCOLS = (DB_PROTOCOL, NODE_PROTOCOL, POOL_PROTOCOL)

CASES = [
    pytest.param(protocol, message, id=f"{protocol.name}.{message.__name__}")
    for protocol in PROTOCOLS
    for message in protocol.messages
]


def sample(info: msgspec.inspect.Type) -> Any:
    """A value of the given type with every optional part filled in (not the defaults)."""
    match info:
        case msgspec.inspect.StructType(cls=cls, fields=fields):
            return cls(**{field.name: sample(field.type) for field in fields})
        case msgspec.inspect.UnionType(types=types):
            return sample(next(t for t in types if not isinstance(t, msgspec.inspect.NoneType)))
        case msgspec.inspect.ListType(item_type=item):
            return [sample(item), sample(item)]
        case msgspec.inspect.DictType(key_type=key, value_type=value):
            return {sample(key): sample(value)}
        case msgspec.inspect.LiteralType(values=values):
            return values[-1]
        case msgspec.inspect.BoolType():
            return True
        case msgspec.inspect.IntType():
            return 7
        case msgspec.inspect.FloatType():
            return 2.5
        case msgspec.inspect.StrType():
            return "sample-text"
        case msgspec.inspect.BytesType():
            return b'{"answer": 42}'
        case msgspec.inspect.AnyType():  # an event's data, a trigger's context values
            return {"any": [1, "two", None]}
    raise TypeError(f"no sample for {info!r}: teach sample() this type")


def sample_message(message: type[Message]) -> Message:
    built = sample(msgspec.inspect.type_info(message))
    assert isinstance(built, message)
    return built


@pytest.mark.parametrize(("protocol", "message"), CASES)
def test_round_trip(protocol: Protocol, message: type[Message]) -> None:
    original = sample_message(message)
    decoded = protocol.decode(protocol.encode(original))
    assert type(decoded) is message
    assert decoded == original


@pytest.mark.parametrize(("protocol", "message"), CASES)
def test_wire_envelope(protocol: Protocol, message: type[Message]) -> None:
    wire = msgspec.msgpack.decode(protocol.encode(sample_message(message)))
    assert set(wire) == {"msgType", "content"}
    assert wire["msgType"] == message.msg_type
    assert all("_" not in key for key in wire["content"]), "content keys are camelCase"


def test_message_types_are_unique_per_protocol() -> None:
    for protocol in PROTOCOLS:
        kinds = [message.msg_type for message in protocol.messages]
        assert len(kinds) == len(set(kinds)), protocol.name


def test_known_wire_form() -> None:
    wire = msgspec.msgpack.decode(DB_PROTOCOL.encode(GetCall(call_num=12)))
    assert wire == {"msgType": "getCall", "content": {"callNum": 12}}


def test_unknown_message_type() -> None:
    with pytest.raises(UnknownMessage):
        DB_PROTOCOL.decode(msgspec.msgpack.encode({"msgType": "nope", "content": {}}))


def test_message_of_another_channel_is_unknown() -> None:
    payload = NODE_PROTOCOL.encode(sample_message(NODE_PROTOCOL.messages[0]))
    with pytest.raises(UnknownMessage):
        DB_PROTOCOL.decode(payload)


@pytest.mark.parametrize(
    "payload",
    [
        msgspec.msgpack.encode({"msgType": "getCall", "content": {"callNum": "x"}}),
        msgspec.msgpack.encode({"msgType": "getCall", "content": {}}),
        msgspec.msgpack.encode({"content": {"callNum": 1}}),
        msgspec.msgpack.encode([1, 2, 3]),
        b"\xc1 not msgpack",
        b"",
    ],
    ids=["wrong-type", "missing-field", "no-msgType", "not-a-map", "garbage", "empty"],
)
def test_malformed_message(payload: bytes) -> None:
    with pytest.raises(BadRequest):
        DB_PROTOCOL.decode(payload)


def test_error_reply_of_exception() -> None:
    assert Protocol.error(NotFound("no call 3")) == Error(code="not_found", message="no call 3")
    internal = Protocol.error(ValueError("boom"))
    assert internal.code == "internal"
    assert "boom" in internal.message
