"""kazoo's recipes, unmodified, against a keeper process: each with many real clients."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from kazoo.client import KazooClient
from kazoo.exceptions import LockTimeout

from .keeper import Server


@pytest.fixture
def clients(keeper_server: Server) -> Iterator[Callable[[int], list[KazooClient]]]:
    """``make(n)``: n started kazoo clients (separate sessions), all stopped at the end."""
    made: list[KazooClient] = []

    def make(n: int) -> list[KazooClient]:
        batch = [KazooClient(keeper_server.hosts, timeout=10) for _ in range(n)]
        for client in batch:
            client.start(timeout=15)
        made.extend(batch)
        return batch

    yield make
    for client in made:
        client.stop()
        client.close()


def root() -> str:
    return f"/recipes-{uuid.uuid4().hex[:8]}"


def run_all(targets: list[Callable[[], None]], timeout: float = 60.0) -> None:
    errors: list[BaseException] = []

    def guarded(target: Callable[[], None]) -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,)) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(t.is_alive() for t in threads), "a recipe thread did not finish"
    assert not errors, errors


def test_lock_with_ten_contenders(clients: Callable[[int], list[KazooClient]]) -> None:
    path = root()
    holders: list[int] = []
    inside = 0
    most = 0
    guard = threading.Lock()

    def contend(n: int, client: KazooClient) -> Callable[[], None]:
        def run() -> None:
            nonlocal inside, most
            with client.Lock(path, f"worker-{n}"):
                with guard:
                    inside += 1
                    most = max(most, inside)
                    holders.append(n)
                time.sleep(0.02)
                with guard:
                    inside -= 1

        return run

    run_all([contend(n, c) for n, c in enumerate(clients(10))])
    assert most == 1  # never two holders
    assert sorted(holders) == list(range(10))  # every waiter got it


def test_lock_contenders_and_a_holder_that_dies(
    clients: Callable[[int], list[KazooClient]],
) -> None:
    path = root()
    first, second = clients(2)
    lock = first.Lock(path, "first")
    assert lock.acquire(timeout=10)
    waiting = second.Lock(path, "second")
    with pytest.raises(LockTimeout):
        waiting.acquire(timeout=0.3)
    assert waiting.contenders() == ["first"]
    first.stop()  # its session closes: its lock node goes
    assert waiting.acquire(timeout=10)
    waiting.release()


def test_election(clients: Callable[[int], list[KazooClient]]) -> None:
    path = root()
    members = clients(3)
    leaders: list[int] = []
    done = threading.Event()

    def campaign(n: int, client: KazooClient) -> None:
        def lead() -> None:
            leaders.append(n)
            if len(leaders) < 3:
                return  # stepping down lets the next one lead
            done.set()

        client.Election(path, f"member-{n}").run(lead)

    threads = [
        threading.Thread(target=campaign, args=(n, c), daemon=True) for n, c in enumerate(members)
    ]
    for thread in threads:
        thread.start()
    assert done.wait(30)
    for thread in threads:
        thread.join(10)
    assert sorted(leaders) == [0, 1, 2]
    assert members[0].Election(path).contenders() == []


def test_counter_under_concurrent_increments(clients: Callable[[int], list[KazooClient]]) -> None:
    path = root()

    def bump(client: KazooClient) -> Callable[[], None]:
        def run() -> None:
            counter = client.Counter(path)
            counter += 1

        return run

    run_all([bump(c) for c in clients(20)])
    (reader,) = clients(1)
    assert reader.Counter(path).value == 20


def test_barrier_and_double_barrier(clients: Callable[[int], list[KazooClient]]) -> None:
    path = root()
    owner, *waiters = clients(4)
    barrier = owner.Barrier(f"{path}/barrier")
    barrier.create()
    passed: list[int] = []

    def wait(n: int, client: KazooClient) -> Callable[[], None]:
        def run() -> None:
            assert client.Barrier(f"{path}/barrier").wait(timeout=30)
            passed.append(n)

        return run

    threads = [threading.Thread(target=wait(n, c)) for n, c in enumerate(waiters)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    assert passed == []  # held while the barrier stands
    barrier.remove()
    for thread in threads:
        thread.join(30)
    assert sorted(passed) == [0, 1, 2]

    order: list[str] = []
    guard = threading.Lock()

    def participate(n: int, client: KazooClient) -> Callable[[], None]:
        def run() -> None:
            double = client.DoubleBarrier(f"{path}/double", 3)
            double.enter()
            with guard:
                order.append("in")
            double.leave()
            with guard:
                order.append("out")

        return run

    run_all([participate(n, c) for n, c in enumerate(clients(3))])
    assert order == ["in"] * 3 + ["out"] * 3  # nobody left before all had entered


def test_queue_fifo_nothing_lost_or_given_twice(
    clients: Callable[[int], list[KazooClient]],
) -> None:
    path = root()
    producer, *consumers = clients(5)
    queue = producer.Queue(path)
    for n in range(40):
        queue.put(str(n).encode())
    got: list[list[int]] = [[] for _ in consumers]

    def consume(i: int, client: KazooClient) -> Callable[[], None]:
        def run() -> None:
            mine = client.Queue(path)
            while (item := mine.get()) is not None:
                got[i].append(int(item))

        return run

    run_all([consume(i, c) for i, c in enumerate(consumers)])
    everything = sorted(n for items in got for n in items)
    assert everything == list(range(40))  # none lost, none given twice
    for items in got:
        assert items == sorted(items)  # each consumer took them in FIFO order
    # one consumer alone sees the exact order, priorities first
    queue.put(b"low", priority=200)
    queue.put(b"first", priority=1)
    queue.put(b"second", priority=1)
    assert [queue.get(), queue.get(), queue.get(), queue.get()] == [
        b"first",
        b"second",
        b"low",
        None,
    ]


def test_locking_queue(clients: Callable[[int], list[KazooClient]]) -> None:
    path = root()
    producer, *consumers = clients(4)
    queue = producer.LockingQueue(path)
    queue.put_all([str(n).encode() for n in range(30)])
    taken: list[int] = []
    guard = threading.Lock()

    def consume(client: KazooClient) -> Callable[[], None]:
        def run() -> None:
            mine = client.LockingQueue(path)
            while True:
                item = mine.get(timeout=1)
                if item is None:
                    return
                with guard:
                    taken.append(int(item))
                assert mine.consume()

        return run

    run_all([consume(c) for c in consumers])
    assert sorted(taken) == list(range(30))
    assert len(queue) == 0
    # an item taken and not consumed goes back to the queue when its holder's session ends
    holder, other = clients(2)
    queue.put(b"held")
    assert holder.LockingQueue(path).get(timeout=5) == b"held"
    assert other.LockingQueue(path).get(timeout=0.3) is None
    holder.stop()
    assert other.LockingQueue(path).get(timeout=10) == b"held"


def test_party(clients: Callable[[int], list[KazooClient]]) -> None:
    path = root()
    members = clients(5)
    parties = [c.Party(path, f"member-{n}") for n, c in enumerate(members)]
    for party in parties:
        party.join()
    assert len(parties[0]) == 5
    assert sorted(parties[0]) == [f"member-{n}" for n in range(5)]
    parties[1].leave()
    members[2].stop()  # a member whose session ends leaves the party
    shallow = members[0].ShallowParty(path)
    assert len(shallow) == 3
    assert sorted(parties[0]) == ["member-0", "member-3", "member-4"]
