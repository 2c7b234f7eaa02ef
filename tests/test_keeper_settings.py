"""The keeper's own settings: connection limit, session timeout bounds, several hosts."""

from __future__ import annotations

from pathlib import Path

from services.keeper.serialization import Exists

from .keeper import RawClient, start_server


def test_connections_per_address_are_limited(tmp_path: Path) -> None:
    keeper = start_server("keeper", tmp_path / "k", keeper_max_connections=2)
    try:
        first, second = RawClient(keeper.hosts), RawClient(keeper.hosts)
        first.connect()
        second.connect()
        third = RawClient(keeper.hosts)
        assert third.closed_by_server()  # dropped before its handshake
        third.close()
        second.close()
        fourth = RawClient(keeper.hosts)  # a slot is free again
        assert fourth.connect().timeout > 0
        assert fourth.call(Exists("/", False))[0] == 0
        fourth.close()
        first.close()
    finally:
        keeper.stop()


def test_session_timeout_bounds_and_several_addresses(tmp_path: Path) -> None:
    keeper = start_server(
        "keeper",
        tmp_path / "k",
        keeper_host="127.0.0.1,::1",
        keeper_min_session_timeout_ms=3000,
        keeper_max_session_timeout_ms=7000,
    )
    try:
        for asked, got in ((100, 3000), (5000, 5000), (60000, 7000)):
            with RawClient(keeper.hosts) as raw:
                assert raw.connect(timeout_ms=asked).timeout == got
        with RawClient(f"::1:{keeper.port}") as raw:  # the second address
            assert raw.connect().timeout == 7000
    finally:
        keeper.stop()
