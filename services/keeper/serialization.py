"""ZooKeeper's client packets in jute encoding: one class per packet, ``decode``/``encode``.

Jute, as ZooKeeper's ``zookeeper.jute`` declares it: int (4 bytes, big-endian), long
(8), boolean (1), buffer and ustring (an int length, -1 for null, then the bytes),
vector (an int count, -1 for null, then the items). Every packet on the wire is a 4-byte
length and then its body. Requests are ``RequestHeader{xid, type}`` and a body; replies
``ReplyHeader{xid, zxid, err}`` and a body; watch events come with xid -1.

A request that does not decode (short, trailing garbage is allowed as ZooKeeper allows
it, a length past the packet, a string that is not UTF-8) raises ``MalformedPacket``: the
connection that sent it is closed.
"""

from __future__ import annotations

import struct
from typing import ClassVar

import msgspec

INT = struct.Struct("!i")
LONG = struct.Struct("!q")
INT_INT = struct.Struct("!ii")
REPLY_HEADER = struct.Struct("!iqi")
MULTI_HEADER = struct.Struct("!iBi")
STAT = struct.Struct("!qqqqiiiqiiq")
CONNECT_REQUEST = struct.Struct("!iqiq")
CONNECT_RESPONSE = struct.Struct("!iiq")

# xids with a meaning of their own (ZooKeeper's ClientCnxn)
WATCH_XID = -1
PING_XID = -2
AUTH_XID = -4
SET_WATCHES_XID = -8

# the largest packet either side accepts (ZooKeeper's default jute.maxbuffer, 0xfffff)
MAX_PACKET = 0xFFFFF


class OpCode:
    """Request types (ZooDefs.OpCode)."""

    CREATE = 1
    DELETE = 2
    EXISTS = 3
    GET_DATA = 4
    SET_DATA = 5
    GET_ACL = 6
    SET_ACL = 7
    GET_CHILDREN = 8
    SYNC = 9
    PING = 11
    GET_CHILDREN2 = 12
    CHECK = 13
    MULTI = 14
    CREATE2 = 15
    RECONFIG = 16
    AUTH = 100
    SET_WATCHES = 101
    GET_EPHEMERALS = 103
    GET_ALL_CHILDREN_NUMBER = 104
    SET_WATCHES2 = 105
    CLOSE = -11
    ERROR = -1


class EventType:
    """``WatcherEvent.type``."""

    NODE_CREATED = 1
    NODE_DELETED = 2
    NODE_DATA_CHANGED = 3
    NODE_CHILDREN_CHANGED = 4


# ``WatcherEvent.state`` of every event a connected session gets
SYNC_CONNECTED = 3


class MalformedPacket(Exception):
    """A packet that does not decode as the request its header names."""


class Reader:
    """Reads jute values from one packet, bounds-checked."""

    __slots__ = ("buf", "offset")

    # ``buf`` is bytes, so a slice of it is bytes already. The hot reads (int32, buffer)
    # do their own unpacking: a request is a handful of fields, each read costs calls.

    def __init__(self, buf: bytes, offset: int = 0) -> None:
        self.buf = buf
        self.offset = offset

    def _take(self, fmt: struct.Struct) -> tuple[int, ...]:
        try:
            values = fmt.unpack_from(self.buf, self.offset)
        except struct.error:
            raise MalformedPacket(f"packet ends inside a field at byte {self.offset}") from None
        self.offset += fmt.size
        return values

    def int32(self) -> int:
        offset = self.offset
        if offset + 4 > len(self.buf):
            raise MalformedPacket(f"packet ends inside a field at byte {offset}")
        self.offset = offset + 4
        value: int = INT.unpack_from(self.buf, offset)[0]
        return value

    def int64(self) -> int:
        return self._take(LONG)[0]

    def boolean(self) -> bool:
        if self.offset >= len(self.buf):
            raise MalformedPacket(f"packet ends inside a field at byte {self.offset}")
        value = self.buf[self.offset]
        self.offset += 1
        return value != 0

    def buffer(self) -> bytes | None:
        buf, start = self.buf, self.offset + 4
        if start > len(buf):
            raise MalformedPacket(f"packet ends inside a field at byte {self.offset}")
        (length,) = INT.unpack_from(buf, self.offset)
        if length < 0:
            self.offset = start
            return None
        end = start + length
        if end > len(buf):
            raise MalformedPacket(f"a field of {length} bytes runs past the packet")
        self.offset = end
        return buf[start:end]

    def string(self) -> str | None:
        raw = self.buffer()
        if raw is None:
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedPacket("a string that is not UTF-8") from None

    def path(self) -> str:
        """A ustring that names a znode: null reads as the empty (invalid) path."""
        return self.string() or ""

    def count(self) -> int:
        """A vector's item count (-1, null, reads as 0)."""
        count = self.int32()
        if count > len(self.buf):  # every item takes at least a byte
            raise MalformedPacket(f"a vector of {count} items cannot fit in the packet")
        return max(count, 0)

    def strings(self) -> list[str]:
        return [self.path() for _ in range(self.count())]

    def more(self) -> bool:
        return self.offset < len(self.buf)


class Writer:
    """Builds one packet body."""

    __slots__ = ("out",)

    def __init__(self) -> None:
        self.out = bytearray()

    def int32(self, value: int) -> None:
        self.out += INT.pack(value)

    def int64(self, value: int) -> None:
        self.out += LONG.pack(value)

    def boolean(self, value: bool) -> None:
        self.out.append(1 if value else 0)

    def buffer(self, value: bytes | None) -> None:
        if value is None:
            self.out += INT.pack(-1)
        else:
            self.out += INT.pack(len(value))
            self.out += value

    def string(self, value: str | None) -> None:
        self.buffer(None if value is None else value.encode("utf-8"))

    def strings(self, values: list[str]) -> None:
        self.int32(len(values))
        for value in values:
            self.string(value)

    def raw(self, value: bytes) -> None:
        self.out += value


def frame(body: bytes | bytearray) -> bytes:
    """A packet: its length, then its body."""
    return INT.pack(len(body)) + body


def reply(xid: int, zxid: int, err: int, body: bytes | bytearray = b"") -> bytes:
    """A framed reply: ``ReplyHeader{xid, zxid, err}`` and the body."""
    return INT.pack(REPLY_HEADER.size + len(body)) + REPLY_HEADER.pack(xid, zxid, err) + body


# ---- data


class Id(msgspec.Struct, frozen=True, array_like=True):
    scheme: str
    id: str


class ACL(msgspec.Struct, frozen=True, array_like=True):
    perms: int
    id: Id

    @classmethod
    def decode(cls, r: Reader) -> ACL:
        perms = r.int32()
        scheme, ident = r.string(), r.string()
        return cls(perms, Id(scheme or "", ident or ""))

    def encode(self, w: Writer) -> None:
        w.int32(self.perms)
        w.string(self.id.scheme)
        w.string(self.id.id)


def read_acls(r: Reader) -> list[ACL]:
    return [ACL.decode(r) for _ in range(r.count())]


def write_acls(w: Writer, acls: list[ACL]) -> None:
    w.int32(len(acls))
    for acl in acls:
        acl.encode(w)


class Stat(msgspec.Struct, frozen=True):
    """What a client learns of a znode, field for field as ZooKeeper's ``Stat``."""

    czxid: int
    mzxid: int
    ctime: int
    mtime: int
    version: int
    cversion: int
    aversion: int
    ephemeralOwner: int  # ZooKeeper's names
    dataLength: int
    numChildren: int
    pzxid: int

    @classmethod
    def decode(cls, r: Reader) -> Stat:
        return cls(*r._take(STAT))

    def encode(self, w: Writer) -> None:
        w.raw(STAT.pack(*msgspec.structs.astuple(self)))


# ---- the session handshake


class ConnectRequest(msgspec.Struct, frozen=True):
    protocol_version: int
    last_zxid_seen: int
    timeout: int
    session_id: int
    passwd: bytes
    read_only: bool = False

    @classmethod
    def decode(cls, r: Reader) -> ConnectRequest:
        version, last_zxid, timeout, session_id = r._take(CONNECT_REQUEST)
        passwd = r.buffer() or b""
        read_only = r.boolean() if r.more() else False  # clients before 3.4 leave it out
        return cls(version, last_zxid, timeout, session_id, passwd, read_only)

    def encode(self, w: Writer) -> None:
        w.raw(
            CONNECT_REQUEST.pack(
                self.protocol_version, self.last_zxid_seen, self.timeout, self.session_id
            )
        )
        w.buffer(self.passwd)
        w.boolean(self.read_only)


class ConnectResponse(msgspec.Struct, frozen=True):
    protocol_version: int
    timeout: int
    session_id: int
    passwd: bytes
    read_only: bool = False

    @classmethod
    def decode(cls, r: Reader) -> ConnectResponse:
        version, timeout, session_id = r._take(CONNECT_RESPONSE)
        passwd = r.buffer() or b""
        read_only = r.boolean() if r.more() else False
        return cls(version, timeout, session_id, passwd, read_only)

    def encode(self, w: Writer) -> None:
        w.raw(CONNECT_RESPONSE.pack(self.protocol_version, self.timeout, self.session_id))
        w.buffer(self.passwd)
        w.boolean(self.read_only)


# ---- requests (the body after the RequestHeader)


class Request(msgspec.Struct, frozen=True):
    """A request body; ``type`` is its op code, ``writes`` whether it is a transaction."""

    type: ClassVar[int]
    writes: ClassVar[bool] = False

    @classmethod
    def decode(cls, r: Reader) -> Request:
        raise NotImplementedError

    def encode(self, w: Writer) -> None:
        raise NotImplementedError


class PathRequest(Request, frozen=True):
    path: str

    @classmethod
    def decode(cls, r: Reader) -> PathRequest:
        return cls(r.path())

    def encode(self, w: Writer) -> None:
        w.string(self.path)


class WatchRequest(Request, frozen=True):
    path: str
    watch: bool

    @classmethod
    def decode(cls, r: Reader) -> WatchRequest:
        return cls(r.path(), r.boolean())

    def encode(self, w: Writer) -> None:
        w.string(self.path)
        w.boolean(self.watch)


class Create(Request, frozen=True):
    type = OpCode.CREATE
    writes = True
    path: str
    data: bytes | None
    acl: list[ACL]
    flags: int

    @classmethod
    def decode(cls, r: Reader) -> Create:
        return cls(r.path(), r.buffer(), read_acls(r), r.int32())

    def encode(self, w: Writer) -> None:
        w.string(self.path)
        w.buffer(self.data)
        write_acls(w, self.acl)
        w.int32(self.flags)


class Create2(Create, frozen=True):
    type = OpCode.CREATE2


class Delete(Request, frozen=True):
    type = OpCode.DELETE
    writes = True
    path: str
    version: int

    @classmethod
    def decode(cls, r: Reader) -> Delete:
        return cls(r.path(), r.int32())

    def encode(self, w: Writer) -> None:
        w.string(self.path)
        w.int32(self.version)


class CheckVersion(Delete, frozen=True):
    type = OpCode.CHECK


class Exists(WatchRequest, frozen=True):
    type = OpCode.EXISTS


class GetData(WatchRequest, frozen=True):
    type = OpCode.GET_DATA


class SetData(Request, frozen=True):
    type = OpCode.SET_DATA
    writes = True
    path: str
    data: bytes | None
    version: int

    @classmethod
    def decode(cls, r: Reader) -> SetData:
        return cls(r.path(), r.buffer(), r.int32())

    def encode(self, w: Writer) -> None:
        w.string(self.path)
        w.buffer(self.data)
        w.int32(self.version)


class GetACL(PathRequest, frozen=True):
    type = OpCode.GET_ACL


class SetACL(Request, frozen=True):
    type = OpCode.SET_ACL
    writes = True
    path: str
    acl: list[ACL]
    version: int

    @classmethod
    def decode(cls, r: Reader) -> SetACL:
        return cls(r.path(), read_acls(r), r.int32())

    def encode(self, w: Writer) -> None:
        w.string(self.path)
        write_acls(w, self.acl)
        w.int32(self.version)


class GetChildren(WatchRequest, frozen=True):
    type = OpCode.GET_CHILDREN


class GetChildren2(WatchRequest, frozen=True):
    type = OpCode.GET_CHILDREN2


class Sync(PathRequest, frozen=True):
    type = OpCode.SYNC


class Ping(Request, frozen=True):
    type = OpCode.PING

    @classmethod
    def decode(cls, r: Reader) -> Ping:
        return cls()

    def encode(self, w: Writer) -> None:
        pass


class Close(Ping, frozen=True):
    type = OpCode.CLOSE
    writes = True


class Reconfig(Request, frozen=True):
    type = OpCode.RECONFIG
    writes = True
    joining: str | None
    leaving: str | None
    new_members: str | None
    config_id: int

    @classmethod
    def decode(cls, r: Reader) -> Reconfig:
        return cls(r.string(), r.string(), r.string(), r.int64())

    def encode(self, w: Writer) -> None:
        w.string(self.joining)
        w.string(self.leaving)
        w.string(self.new_members)
        w.int64(self.config_id)


class Auth(Request, frozen=True):
    type = OpCode.AUTH
    auth_type: int
    scheme: str
    auth: bytes

    @classmethod
    def decode(cls, r: Reader) -> Auth:
        return cls(r.int32(), r.path(), r.buffer() or b"")

    def encode(self, w: Writer) -> None:
        w.int32(self.auth_type)
        w.string(self.scheme)
        w.buffer(self.auth)


class SetWatches(Request, frozen=True):
    """Sent by a client that reconnects with watches set (ZooKeeper's Java client)."""

    type = OpCode.SET_WATCHES
    relative_zxid: int
    data_watches: list[str]
    exist_watches: list[str]
    child_watches: list[str]

    @classmethod
    def decode(cls, r: Reader) -> SetWatches:
        return cls(r.int64(), r.strings(), r.strings(), r.strings())

    def encode(self, w: Writer) -> None:
        w.int64(self.relative_zxid)
        w.strings(self.data_watches)
        w.strings(self.exist_watches)
        w.strings(self.child_watches)


class SetWatches2(SetWatches, frozen=True):
    """SetWatches with the persistent watches too (none here: ``addWatch`` is not served)."""

    type = OpCode.SET_WATCHES2
    persistent_watches: list[str] = []
    persistent_recursive_watches: list[str] = []

    @classmethod
    def decode(cls, r: Reader) -> SetWatches2:
        return cls(r.int64(), r.strings(), r.strings(), r.strings(), r.strings(), r.strings())

    def encode(self, w: Writer) -> None:
        super().encode(w)
        w.strings(self.persistent_watches)
        w.strings(self.persistent_recursive_watches)


class GetEphemerals(PathRequest, frozen=True):
    type = OpCode.GET_EPHEMERALS


class GetAllChildrenNumber(PathRequest, frozen=True):
    type = OpCode.GET_ALL_CHILDREN_NUMBER


class MultiHeader(msgspec.Struct, frozen=True):
    type: int
    done: bool
    err: int

    @classmethod
    def decode(cls, r: Reader) -> MultiHeader:
        kind, done, err = r._take(MULTI_HEADER)
        return cls(kind, done != 0, err)

    def encode(self, w: Writer) -> None:
        w.raw(MULTI_HEADER.pack(self.type, 1 if self.done else 0, self.err))


MULTI_END = MultiHeader(-1, True, -1)

# The operations a multi may hold (ZooKeeper's MultiOperationRecord), by op code.
MULTI_OPS: dict[int, type[Request]] = {
    OpCode.CREATE: Create,
    OpCode.CREATE2: Create2,
    OpCode.DELETE: Delete,
    OpCode.SET_DATA: SetData,
    OpCode.CHECK: CheckVersion,
}


class Multi(Request, frozen=True):
    """Operations applied all together or not at all, as one transaction."""

    type = OpCode.MULTI
    writes = True
    ops: list[Request]

    @classmethod
    def decode(cls, r: Reader) -> Multi:
        ops: list[Request] = []
        while True:
            header = MultiHeader.decode(r)
            if header.done:
                return cls(ops)
            kind = MULTI_OPS.get(header.type)
            if kind is None:
                raise MalformedPacket(f"op type {header.type} cannot be part of a multi")
            ops.append(kind.decode(r))

    def encode(self, w: Writer) -> None:
        for op in self.ops:
            MultiHeader(op.type, False, -1).encode(w)
            op.encode(w)
        MULTI_END.encode(w)


REQUESTS: dict[int, type[Request]] = {
    kind.type: kind
    for kind in (
        Create,
        Create2,
        Delete,
        Exists,
        GetData,
        SetData,
        GetACL,
        SetACL,
        GetChildren,
        GetChildren2,
        Sync,
        Ping,
        CheckVersion,
        Multi,
        Reconfig,
        Auth,
        SetWatches,
        SetWatches2,
        GetEphemerals,
        GetAllChildrenNumber,
        Close,
    )
}


def encode_request(xid: int, request: Request) -> bytes:
    """A framed request (the client side: tests and tools)."""
    w = Writer()
    w.raw(INT_INT.pack(xid, request.type))
    request.encode(w)
    return frame(w.out)


def watcher_event(kind: int, path: str) -> bytes:
    """A framed watch event: xid -1, ``WatcherEvent{type, state, path}``."""
    w = Writer()
    w.raw(INT_INT.pack(kind, SYNC_CONNECTED))
    w.string(path)
    return reply(WATCH_XID, -1, 0, w.out)
