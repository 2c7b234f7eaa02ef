"""The keeper's protocol, checked against Debian's ZooKeeper: every test runs on both.

The ``zk_server`` fixture is the keeper, then a real ZooKeeper server (3.8, started on a
free port with a data folder of its own); the test bodies and their expected results are
the same for both, so any difference in behaviour fails one of the two runs. Stat fields
are compared by their relations (zxids of one server mean nothing on the other).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import (
    BadVersionError,
    InvalidACLError,
    NoAuthError,
    NoChildrenForEphemeralsError,
    NodeExistsError,
    NoNodeError,
    NotEmptyError,
    RolledBackError,
    RuntimeInconsistency,
)
from kazoo.protocol.states import EventType as KazooEvent
from kazoo.security import ACL, Id, make_digest_acl

from services.keeper import serialization as wire
from services.keeper.serialization import (
    INT,
    MULTI_END,
    PING_XID,
    Auth,
    CheckVersion,
    Close,
    Create,
    Create2,
    Delete,
    EventType,
    Exists,
    GetChildren,
    GetData,
    GetEphemerals,
    Multi,
    MultiHeader,
    Ping,
    SetData,
    SetWatches,
    Stat,
    Sync,
    encode_request,
    frame,
)

from .keeper import TICK_MS, RawClient, Server, four_letter_word, kazoo_client

OPEN = [wire.ACL(31, wire.Id("world", "anyone"))]
NO_NODE, NODE_EXISTS, BAD_ARGUMENTS, MARSHALLING, UNIMPLEMENTED = -101, -110, -8, -5, -6


@pytest.fixture
def zk(zk_server: Server) -> Iterator[KazooClient]:
    with kazoo_client(zk_server.hosts) as client:
        yield client


@pytest.fixture
def base(zk: KazooClient) -> str:
    """A fresh persistent node for the test's own nodes."""
    path = f"/t-{uuid.uuid4().hex[:8]}"
    zk.create(path, b"base")
    return path


def other_client(server: Server) -> KazooClient:
    client = KazooClient(server.hosts, timeout=10)
    client.start(timeout=15)
    return client


def wait_until(check, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


# ---- nodes and their Stat


def test_create_get_set_delete_and_stat(zk: KazooClient, base: str) -> None:
    path = zk.create(f"{base}/a", b"hello")
    assert path == f"{base}/a"
    data, stat = zk.get(path)
    assert data == b"hello"
    assert stat.czxid == stat.mzxid == stat.pzxid > 0
    assert stat.ctime == stat.mtime > 0
    assert (stat.version, stat.cversion, stat.aversion) == (0, 0, 0)
    assert (stat.ephemeralOwner, stat.dataLength, stat.numChildren) == (0, 5, 0)

    changed = zk.set(path, b"hi")
    assert changed.version == 1 and changed.mzxid > stat.mzxid
    assert changed.czxid == stat.czxid and changed.pzxid == stat.pzxid
    assert changed.mtime >= stat.mtime and changed.dataLength == 2
    assert zk.get(path) == (b"hi", changed)

    parent_before = zk.exists(base)
    child = zk.create(f"{path}/c")
    after_create = zk.exists(path)
    assert after_create.numChildren == 1 and after_create.cversion == 1
    assert after_create.pzxid == zk.exists(child).czxid
    assert after_create.mzxid == changed.mzxid and after_create.version == 1
    zk.delete(child)
    after_delete = zk.exists(path)
    # ZooKeeper shows cversion as creates plus deletes (DataNode.copyStat)
    assert after_delete.numChildren == 0 and after_delete.cversion == 2
    assert after_delete.pzxid > after_create.pzxid
    zk.delete(path)
    assert zk.exists(path) is None
    parent_after = zk.exists(base)
    assert parent_after.cversion == parent_before.cversion + 1  # the delete of /a
    assert parent_after.numChildren == 0


def test_null_and_empty_data(zk: KazooClient, base: str, zk_server: Server) -> None:
    zk.create(f"{base}/empty", b"")
    assert zk.get(f"{base}/empty")[0] == b""
    with RawClient(zk_server.hosts) as raw:
        raw.connect()
        err, _ = raw.call(Create(f"{base}/null", None, OPEN, 0))
        assert err == 0
        err, body = raw.call(GetData(f"{base}/null", False))
        assert err == 0 and body.buffer() is None
        assert Stat.decode(body).dataLength == 0


def test_children_and_children2(zk: KazooClient, base: str) -> None:
    for name in ("b", "a", "c"):
        zk.create(f"{base}/{name}")
    assert sorted(zk.get_children(base)) == ["a", "b", "c"]
    children, stat = zk.get_children(base, include_data=True)
    assert sorted(children) == ["a", "b", "c"]
    assert stat.numChildren == 3 and stat.cversion == 3
    assert stat == zk.exists(base)
    with pytest.raises(NoNodeError):
        zk.get_children(f"{base}/missing")


def test_root_and_zookeeper_nodes(zk: KazooClient) -> None:
    assert "zookeeper" in zk.get_children("/")
    assert sorted(zk.get_children("/zookeeper")) == ["config", "quota"]
    acl, _ = zk.get_acls("/zookeeper/config")
    assert [(a.perms, a.id.scheme, a.id.id) for a in acl] == [(1, "world", "anyone")]
    _, stat = zk.get("/zookeeper")
    assert (stat.czxid, stat.ctime, stat.numChildren, stat.cversion) == (0, 0, 2, -2)


def test_errors(zk: KazooClient, base: str) -> None:
    with pytest.raises(NoNodeError):
        zk.get(f"{base}/missing")
    with pytest.raises(NoNodeError):
        zk.create(f"{base}/missing/child")
    with pytest.raises(NoNodeError):
        zk.delete(f"{base}/missing")
    with pytest.raises(NoNodeError):
        zk.set(f"{base}/missing", b"x")
    zk.create(f"{base}/n", b"1")
    with pytest.raises(NodeExistsError):
        zk.create(f"{base}/n")
    zk.create(f"{base}/n/child")
    with pytest.raises(NotEmptyError):
        zk.delete(f"{base}/n")
    zk.create(f"{base}/e", ephemeral=True)
    with pytest.raises(NoChildrenForEphemeralsError):
        zk.create(f"{base}/e/child")
    # NodeExists is checked before NoChildrenForEphemerals, as ZooKeeper does
    with pytest.raises(NodeExistsError):
        zk.create(f"{base}/e")


def test_versions_reject_stale_writes(zk: KazooClient, base: str) -> None:
    path = zk.create(f"{base}/v", b"0")
    stat = zk.set(path, b"1", version=0)
    assert stat.version == 1
    with pytest.raises(BadVersionError):
        zk.set(path, b"stale", version=0)
    with pytest.raises(BadVersionError):
        zk.delete(path, version=0)
    assert zk.get(path)[0] == b"1"
    zk.set(path, b"2", version=-1)  # -1: any version
    zk.delete(path, version=2)
    assert zk.exists(path) is None


def test_invalid_paths(zk_server: Server, base: str) -> None:
    """BadArguments, or NoNode where ZooKeeper looks the parent up first."""
    expected = {
        f"{base}/": BAD_ARGUMENTS,
        f"{base}/.": BAD_ARGUMENTS,
        f"{base}/a\x01": BAD_ARGUMENTS,
        f"{base}/a\u0085": BAD_ARGUMENTS,
        f"{base}/a\U0001f600": BAD_ARGUMENTS,
        f"{base}//x": NO_NODE,  # the parent "base/" does not exist
        f"{base}/./x": NO_NODE,
        f"{base}/../x": NO_NODE,
        "": BAD_ARGUMENTS,
        "relative": BAD_ARGUMENTS,
        "/": NODE_EXISTS,
    }
    with RawClient(zk_server.hosts) as raw:
        raw.connect()
        got = {path: raw.call(Create(path, b"", OPEN, 0))[0] for path in expected}
        assert got == expected
        assert raw.call(SetData(f"{base}//x", b"", -1))[0] == BAD_ARGUMENTS
        assert raw.call(SetData(f"{base}/a\x01", b"", -1))[0] == BAD_ARGUMENTS
        for special in ("/", "/zookeeper"):
            assert raw.call(Delete(special, -1))[0] == BAD_ARGUMENTS, special
        err, body = raw.call(Create(f"{base}/", b"", OPEN, 2))  # sequential: "/base/000..."
        assert err == 0 and body.string() == f"{base}/0000000000"
        assert raw.call(Create(f"{base}/x", b"", OPEN, 8))[0] == BAD_ARGUMENTS  # no such mode
        assert raw.call(Create(f"{base}/x", b"", OPEN, 5))[0] == UNIMPLEMENTED  # TTLs are off
        assert raw.call(Create(f"{base}/x", b"", [], 0))[0] == -114  # an empty ACL


# ---- sequential and ephemeral nodes


def test_sequential_names(zk: KazooClient, base: str) -> None:
    first = zk.create(f"{base}/s-", sequence=True)
    assert first == f"{base}/s-0000000000"
    zk.create(f"{base}/plain")
    second = zk.create(f"{base}/s-", sequence=True)
    assert second == f"{base}/s-0000000002"  # the parent's count of creates
    zk.delete(second)
    third = zk.create(f"{base}/s-", b"", ephemeral=True, sequence=True)
    assert third == f"{base}/s-0000000003"  # a delete does not give a number back
    assert zk.exists(third).ephemeralOwner == zk.client_id[0]


def test_sequential_names_unique_under_concurrency(zk_server: Server, base: str) -> None:
    clients = [other_client(zk_server) for _ in range(8)]
    made: list[str] = []
    lock = threading.Lock()

    def work(client: KazooClient) -> None:
        for _ in range(25):
            path = client.create(f"{base}/q-", sequence=True)
            with lock:
                made.append(path)

    threads = [threading.Thread(target=work, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for client in clients:
        client.stop()
        client.close()
    assert len(made) == len(set(made)) == 200
    assert sorted(made) == [f"{base}/q-{n:010d}" for n in range(200)]


def test_ephemerals_go_with_a_closed_session_and_fire_watches(
    zk: KazooClient, zk_server: Server, base: str
) -> None:
    owner = other_client(zk_server)
    node = owner.create(f"{base}/eph", b"mine", ephemeral=True)
    assert zk.exists(node).ephemeralOwner == owner.client_id[0]
    events: list[tuple[str, str]] = []
    zk.exists(node, watch=lambda e: events.append((e.type, e.path)))
    zk.get_children(base, watch=lambda e: events.append((e.type, e.path)))
    owner.stop()
    owner.close()
    wait_until(lambda: len(events) == 2)
    assert events == [(KazooEvent.DELETED, node), (KazooEvent.CHILD, base)]
    assert zk.exists(node) is None


def test_get_ephemerals(zk_server: Server, base: str) -> None:
    with RawClient(zk_server.hosts) as raw:
        raw.connect()
        for name in ("e1", "e2"):
            assert raw.call(Create(f"{base}/{name}", b"", OPEN, 1))[0] == 0
        assert raw.call(Create(f"{base}/p", b"", OPEN, 0))[0] == 0
        err, body = raw.call(GetEphemerals(base))
        assert err == 0 and sorted(body.strings()) == [f"{base}/e1", f"{base}/e2"]
        err, body = raw.call(GetEphemerals(f"{base}/e2"))
        assert err == 0 and body.strings() == [f"{base}/e2"]


# ---- watches


def test_watches_fire_once_and_in_order(zk: KazooClient, zk_server: Server, base: str) -> None:
    writer = other_client(zk_server)
    try:
        path = f"{base}/w"
        seen: list[tuple[str, str]] = []
        zk.exists(path, watch=lambda e: seen.append(("exists", e.type)))
        writer.create(path, b"1")
        wait_until(lambda: len(seen) == 1)
        zk.get(path, watch=lambda e: seen.append(("data", e.type)))
        zk.get_children(path, watch=lambda e: seen.append(("children", e.type)))
        writer.set(path, b"2")
        writer.set(path, b"3")  # the data watch fired already: no second event
        writer.create(f"{path}/c")
        writer.create(f"{path}/d")
        wait_until(lambda: len(seen) == 3)
        zk.get(path, watch=lambda e: seen.append(("data", e.type)))
        zk.get_children(path, watch=lambda e: seen.append(("children", e.type)))
        writer.delete(f"{path}/c")
        writer.delete(f"{path}/d")
        writer.delete(path)
        wait_until(lambda: len(seen) == 5)
        time.sleep(0.3)  # nothing more may come
        assert seen == [
            ("exists", KazooEvent.CREATED),
            ("data", KazooEvent.CHANGED),
            ("children", KazooEvent.CHILD),
            ("children", KazooEvent.CHILD),
            ("data", KazooEvent.DELETED),
        ]
    finally:
        writer.stop()
        writer.close()


def test_event_arrives_before_the_reply_that_reveals_the_change(
    zk_server: Server, base: str
) -> None:
    path = f"{base}/order"
    with RawClient(zk_server.hosts) as watcher, RawClient(zk_server.hosts) as writer:
        watcher.connect()
        writer.connect()
        assert writer.call(Create(path, b"old", OPEN, 0))[0] == 0
        err, _ = watcher.call(GetData(path, True))
        assert err == 0
        err, _ = watcher.call(GetChildren(base, True))
        assert err == 0
        assert writer.call(SetData(path, b"new", -1))[0] == 0
        assert writer.call(Create(f"{base}/sibling", b"", OPEN, 0))[0] == 0
        xid = watcher.send(GetData(path, False))
        packets = []
        while True:
            got, _, err, body = watcher.read_reply()
            packets.append(got)
            if got == xid:
                assert body.buffer() == b"new"
                break
            kind, state = body.int32(), body.int32()
            packets[-1] = (kind, state, body.string())  # type: ignore[call-overload]
        assert packets == [
            (EventType.NODE_DATA_CHANGED, 3, path),
            (EventType.NODE_CHILDREN_CHANGED, 3, base),
            xid,
        ]


def test_exists_watch_on_a_missing_node_and_get_watch_not_set_on_missing(
    zk_server: Server, base: str
) -> None:
    path = f"{base}/later"
    with RawClient(zk_server.hosts) as watcher, RawClient(zk_server.hosts) as writer:
        watcher.connect()
        writer.connect()
        assert watcher.call(GetData(path, True))[0] == NO_NODE  # sets no watch
        assert watcher.call(Exists(path, True))[0] == NO_NODE  # sets one
        assert writer.call(Create(path, b"", OPEN, 0))[0] == 0
        xid, _, err, body = watcher.read_reply()
        assert (xid, err) == (-1, 0)
        assert (body.int32(), body.int32(), body.string()) == (EventType.NODE_CREATED, 3, path)
        err, _ = watcher.call(Sync(path))  # nothing else was queued before this reply
        assert err == 0


def test_set_watches_on_reconnect(zk_server: Server, base: str) -> None:
    """What zkCli sends after a reconnect: outdated watches fire at once, others are set."""
    with RawClient(zk_server.hosts) as writer:
        writer.connect()
        for name in ("same", "changed", "gone", "kids"):
            assert writer.call(Create(f"{base}/{name}", b"", OPEN, 0))[0] == 0
        _, zxid, _, _ = (writer.send(Sync(base)), *writer.read_reply()[1:])
        assert writer.call(SetData(f"{base}/changed", b"x", -1))[0] == 0
        assert writer.call(Delete(f"{base}/gone", -1))[0] == 0
        assert writer.call(Create(f"{base}/kids/k", b"", OPEN, 0))[0] == 0
        assert writer.call(Create(f"{base}/born", b"", OPEN, 0))[0] == 0
        with RawClient(zk_server.hosts) as watcher:
            watcher.connect()
            request = SetWatches(
                zxid,
                [f"{base}/same", f"{base}/changed", f"{base}/gone"],
                [f"{base}/born", f"{base}/unborn"],
                [f"{base}/kids", f"{base}/same"],
            )
            watcher.send(request, xid=-8)
            events = []
            while True:
                xid, _, err, body = watcher.read_reply()
                if xid == -8:
                    assert err == 0
                    break
                events.append((body.int32(), body.int32(), body.string()))
            assert sorted(events) == sorted(
                [
                    (EventType.NODE_DATA_CHANGED, 3, f"{base}/changed"),
                    (EventType.NODE_DELETED, 3, f"{base}/gone"),
                    (EventType.NODE_CREATED, 3, f"{base}/born"),
                    (EventType.NODE_CHILDREN_CHANGED, 3, f"{base}/kids"),
                ]
            )
            # the ones set: a change to "same" and the create of "unborn" fire now
            assert writer.call(SetData(f"{base}/same", b"y", -1))[0] == 0
            assert writer.call(Create(f"{base}/unborn", b"", OPEN, 0))[0] == 0
            got = [watcher.read_reply() for _ in range(2)]
            assert [(r[3].int32(), r[3].int32(), r[3].string()) for r in got] == [
                (EventType.NODE_DATA_CHANGED, 3, f"{base}/same"),
                (EventType.NODE_CREATED, 3, f"{base}/unborn"),
            ]


# ---- multi


def test_multi_all_or_nothing(zk: KazooClient, base: str) -> None:
    zk.create(f"{base}/x", b"0")
    tx = zk.transaction()
    tx.create(f"{base}/new")
    tx.set_data(f"{base}/x", b"changed")
    tx.delete(f"{base}/missing")
    tx.create(f"{base}/after")
    results = tx.commit()
    # every result is an error: the ones before the failure "rolled back", the ones after
    # "runtime inconsistency" (ZooKeeper's MultiResponse)
    assert [type(r) for r in results] == [
        RolledBackError,
        RolledBackError,
        NoNodeError,
        RuntimeInconsistency,
    ]
    assert zk.exists(f"{base}/new") is None
    assert zk.exists(f"{base}/after") is None
    assert zk.get(f"{base}/x")[0] == b"0"
    assert zk.exists(f"{base}/x").version == 0

    tx = zk.transaction()
    tx.check(f"{base}/x", 0)
    tx.create(f"{base}/s-", sequence=True)
    tx.create(f"{base}/s-", sequence=True)
    tx.set_data(f"{base}/x", b"1")
    tx.delete(f"{base}/s-0000000001")
    results = tx.commit()
    assert results[0] is True
    assert results[1:3] == [f"{base}/s-0000000001", f"{base}/s-0000000002"]
    assert results[3].version == 1 and results[4] is True
    stats = [zk.exists(f"{base}/x"), zk.exists(f"{base}/s-0000000002")]
    assert stats[0].mzxid == stats[1].czxid  # one transaction, one zxid

    tx = zk.transaction()
    tx.check(f"{base}/x", 0)  # stale
    tx.set_data(f"{base}/x", b"2")
    assert [type(r) for r in tx.commit()] == [BadVersionError, RuntimeInconsistency]
    assert zk.get(f"{base}/x")[0] == b"1"

    tx = zk.transaction()
    tx.create(f"{base}/ok")
    tx.create(f"{base}/ok")  # exists by then
    assert [type(r) for r in tx.commit()] == [RolledBackError, NodeExistsError]
    assert zk.exists(f"{base}/ok") is None


def test_multi_results_of_a_failure(zk_server: Server, base: str) -> None:
    with RawClient(zk_server.hosts) as raw:
        raw.connect()
        ops = [
            Create(f"{base}/a", b"", OPEN, 0),
            CheckVersion(f"{base}", 5),
            Create(f"{base}/b", b"", OPEN, 0),
        ]
        err, body = raw.call(Multi(ops))
        assert err == 0  # the errors are in the results
        results = []
        while True:
            header = MultiHeader.decode(body)
            if header.done:
                assert header == MULTI_END
                break
            results.append((header.type, header.err, body.int32()))
        assert results == [(-1, 0, 0), (-1, -103, -103), (-1, -2, -2)]
        err, body = raw.call(Multi([]))
        assert err == 0 and MultiHeader.decode(body) == MULTI_END
        err, body = raw.call(Multi([Create2(f"{base}/c", b"abc", OPEN, 0)]))
        assert err == 0
        header = MultiHeader.decode(body)
        # ZooKeeper 3.8 answers a create2 inside a multi as a create: the path, no Stat
        assert (header.type, header.err) == (1, 0)
        assert body.string() == f"{base}/c"
        assert MultiHeader.decode(body) == MULTI_END


# ---- ACLs and auth


def test_digest_acl_enforced(zk: KazooClient, zk_server: Server, base: str) -> None:
    owner = KazooClient(zk_server.hosts, timeout=10, auth_data=[("digest", "ada:secret")])
    owner.start(timeout=15)
    stranger = other_client(zk_server)
    try:
        acl = make_digest_acl("ada", "secret", all=True)
        path = owner.create(f"{base}/private", b"mine", acl=[acl])
        assert owner.get(path)[0] == b"mine"
        with pytest.raises(NoAuthError):
            stranger.get(path)
        with pytest.raises(NoAuthError):
            stranger.set(path, b"x")
        with pytest.raises(NoAuthError):
            stranger.create(f"{path}/child")
        with pytest.raises(NoAuthError):
            stranger.get_children(path)
        assert stranger.exists(path) is not None  # exists checks no ACL
        with pytest.raises(NoAuthError):
            stranger.get_acls(path)
        acls, stat = owner.get_acls(path)
        assert [(a.perms, a.id.scheme, a.id.id) for a in acls] == [(31, "digest", acl.id.id)]
        # a reader without ADMIN sees the digest masked
        read_only = ACL(1, Id("world", "anyone"))
        owner.set_acls(path, [acl, read_only])
        shown, shown_stat = stranger.get_acls(path)
        assert [(a.perms, a.id.id) for a in shown] == [(31, "ada:x"), (1, "anyone")]
        assert shown_stat.aversion == stat.aversion + 1
        with pytest.raises(BadVersionError):
            owner.set_acls(path, [acl], version=0)
        stranger.add_auth("digest", "ada:secret")
        stranger.set(path, b"now mine too")
        # "auth" stands for the connection's digest ids; without one it is invalid
        made = owner.create(f"{base}/auth", acl=[ACL(31, Id("auth", ""))])
        assert owner.get_acls(made)[0][0].id == Id("digest", acl.id.id)
        with pytest.raises(InvalidACLError):
            zk.create(f"{base}/auth2", acl=[ACL(31, Id("auth", ""))])
        with pytest.raises(InvalidACLError):
            zk.create(f"{base}/bad", acl=[ACL(31, Id("digest", "no-colon"))])
        with pytest.raises(InvalidACLError):
            zk.create(f"{base}/bad", acl=[ACL(31, Id("world", "someone"))])
        ip_node = zk.create(f"{base}/ip", acl=[ACL(31, Id("ip", "127.0.0.1"))])
        assert zk.get(ip_node)[0] == b""
        other_net = zk.create(f"{base}/ip2", acl=[ACL(31, Id("ip", "10.0.0.0/8"))])
        with pytest.raises(NoAuthError):
            zk.get(other_net)
    finally:
        for client in (owner, stranger):
            client.stop()
            client.close()


def test_auth_with_an_unknown_scheme_fails_and_closes(zk_server: Server) -> None:
    with RawClient(zk_server.hosts) as raw:
        raw.connect()
        raw.send(Auth(0, "digest", b"ada:secret"), xid=-4)
        assert raw.read_reply()[:3:2] == (-4, 0)
        raw.send(Auth(0, "nosuch", b"x"), xid=-4)
        xid, _, err, _ = raw.read_reply()
        assert (xid, err) == (-4, -115)
        assert raw.closed_by_server()


# ---- sessions


def test_session_timeout_is_negotiated(zk_server: Server) -> None:
    for asked, got in ((100, 2 * TICK_MS), (5000, 5000), (600000, 20 * TICK_MS)):
        with RawClient(zk_server.hosts) as raw:
            response = raw.connect(timeout_ms=asked)
            assert response.timeout == got
            assert response.session_id != 0 and len(response.passwd) == 16


def test_reconnect_keeps_the_session_and_its_ephemerals(zk_server: Server, base: str) -> None:
    path = f"{base}/kept"
    with RawClient(zk_server.hosts) as first:
        session = first.connect(timeout_ms=4000)
        assert first.call(Create(path, b"", OPEN, 1))[0] == 0
    # the connection dropped without a close: the session lives on
    with RawClient(zk_server.hosts) as second:
        again = second.connect(4000, session.session_id, session.passwd)
        assert (again.session_id, again.passwd) == (session.session_id, session.passwd)
        err, body = second.call(Exists(path, False))
        assert err == 0 and Stat.decode(body).ephemeralOwner == session.session_id
        with RawClient(zk_server.hosts) as wrong:
            refused = wrong.connect(4000, session.session_id, bytes(16))
            assert (refused.timeout, refused.session_id) == (0, 0)
            assert wrong.closed_by_server()
        # the session moved: a third connection takes it from the second
        with RawClient(zk_server.hosts) as third:
            assert third.connect(4000, session.session_id, session.passwd).timeout == 4000
            assert second.closed_by_server()
            assert third.call(Close())[0] == 0
            assert third.closed_by_server()
    with RawClient(zk_server.hosts) as check:
        check.connect()
        assert check.call(Exists(path, False))[0] == NO_NODE
        gone = RawClient(zk_server.hosts)
        assert gone.connect(4000, session.session_id, session.passwd).timeout == 0
        gone.close()


def test_an_expired_session_loses_its_ephemerals_and_fires_watches(
    zk: KazooClient, zk_server: Server, base: str
) -> None:
    path = f"{base}/expiring"
    silent = RawClient(zk_server.hosts)
    session = silent.connect(timeout_ms=2 * TICK_MS)
    assert silent.call(Create(path, b"", OPEN, 1))[0] == 0
    events: list[str] = []
    zk.get(path, watch=lambda e: events.append(e.type))
    started = time.monotonic()
    # it sends nothing more, not even a ping, and keeps its socket open
    wait_until(lambda: events == [KazooEvent.DELETED], timeout=15)
    assert time.monotonic() - started >= 2 * TICK_MS / 1000 * 0.5
    assert zk.exists(path) is None
    assert silent.closed_by_server()
    silent.close()
    with RawClient(zk_server.hosts) as late:
        response = late.connect(4000, session.session_id, session.passwd)
        assert (response.timeout, response.session_id) == (0, 0)


def test_pings_keep_a_session_alive(zk_server: Server, base: str) -> None:
    with RawClient(zk_server.hosts) as raw:
        raw.connect(timeout_ms=2 * TICK_MS)
        assert raw.call(Create(f"{base}/pinged", b"", OPEN, 1))[0] == 0
        for _ in range(8):  # twice the timeout
            raw.send(Ping(), xid=PING_XID)
            xid, _, err, _ = raw.read_reply()
            assert (xid, err) == (PING_XID, 0)
            time.sleep(TICK_MS / 1000 / 2)
        assert raw.call(Exists(f"{base}/pinged", False))[0] == 0


def test_client_ahead_of_the_server_is_refused(zk_server: Server) -> None:
    with RawClient(zk_server.hosts) as raw:
        w = wire.Writer()
        wire.ConnectRequest(0, 2**40, 4000, 0, bytes(16), False).encode(w)
        raw.send_raw(frame(w.out))
        assert raw.closed_by_server()


# ---- malformed input


def test_a_bad_length_closes_the_connection(zk_server: Server) -> None:
    for length in (-1, 0x7FFFFFFF):
        with RawClient(zk_server.hosts) as raw:
            raw.connect()
            raw.send_raw(INT.pack(length) + b"\0" * 16)
            assert raw.closed_by_server()


def test_a_malformed_connect_closes_the_connection(zk_server: Server) -> None:
    with RawClient(zk_server.hosts) as raw:
        raw.send_raw(frame(b"\0\0\0"))
        assert raw.closed_by_server()


def test_a_body_that_does_not_decode_is_a_marshalling_error(zk_server: Server) -> None:
    with RawClient(zk_server.hosts) as raw:
        raw.connect()
        # a getData whose path length runs past the packet
        raw.send_raw(frame(INT.pack(7) + INT.pack(4) + INT.pack(1000) + b"/ab"))
        xid, _, err, _ = raw.read_reply()
        assert (xid, err) == (7, MARSHALLING)
        assert raw.call(Exists("/", False))[0] == 0  # the connection lives on


def test_an_unknown_request_type_is_unimplemented_and_closes(zk_server: Server) -> None:
    with RawClient(zk_server.hosts) as raw:
        raw.connect()
        raw.send_raw(frame(INT.pack(9) + INT.pack(999)))
        xid, _, err, _ = raw.read_reply()
        assert (xid, err) == (9, UNIMPLEMENTED)
        assert raw.closed_by_server()


def test_sync_echoes_its_path_and_four_letter_words(zk_server: Server) -> None:
    with RawClient(zk_server.hosts) as raw:
        raw.connect()
        err, body = raw.call(Sync("/zookeeper"))
        assert err == 0 and body.string() == "/zookeeper"
    assert four_letter_word("127.0.0.1", zk_server.port, "ruok") == "imok"
    assert "Mode: standalone" in four_letter_word("127.0.0.1", zk_server.port, "srvr")
    assert "zookeeper.version=" in four_letter_word("127.0.0.1", zk_server.port, "envi")


def test_pipelined_requests_answer_in_order(zk_server: Server, base: str) -> None:
    with RawClient(zk_server.hosts) as raw:
        raw.connect()
        requests = []
        for n in range(50):
            requests.append(encode_request(n + 1, Create(f"{base}/p{n}", b"x", OPEN, 0)))
            requests.append(encode_request(1000 + n, GetData(f"{base}/p{n}", False)))
        raw.send_raw(b"".join(requests))
        order = [raw.read_reply()[0] for _ in range(100)]
        assert order == [x for n in range(50) for x in (n + 1, 1000 + n)]


def test_reconfig_children_count_and_acl_errors(zk_server: Server, base: str) -> None:
    with RawClient(zk_server.hosts) as raw:
        raw.connect()
        for path in (f"{base}/a", f"{base}/a/b", f"{base}/c"):
            assert raw.call(Create(path, b"", OPEN, 0))[0] == 0
        err, body = raw.call(wire.GetAllChildrenNumber(base))
        assert (err, body.int32()) == (0, 3)
        assert raw.call(wire.GetAllChildrenNumber(f"{base}/nope"))[0] == NO_NODE
        assert raw.call(wire.Reconfig(None, None, "server.1=x", -1))[0] == -123
        assert raw.call(wire.GetACL(f"{base}/nope"))[0] == NO_NODE
        assert raw.call(wire.SetACL(f"{base}/a", OPEN, 3))[0] == -103
        assert raw.call(wire.SetACL(f"{base}/nope", OPEN, -1))[0] == NO_NODE
