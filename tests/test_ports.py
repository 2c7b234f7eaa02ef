"""Ports for servers told their port before they bind it (services/common/ports.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common import ports


@pytest.fixture(autouse=True)
def none_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "_given", set())


def test_a_port_is_never_given_twice_and_services_and_sandboxes_have_their_own() -> None:
    # a local cluster chooses seven or more before any binds: picked at random from the
    # span alone, 2,000 would hold the same port twice nearly always
    services = [ports.free_port() for _ in range(2000)]
    sandboxes = [ports.sandbox_port() for _ in range(2000)]
    assert len(set(services + sandboxes)) == 4000
    low = int(ports.EPHEMERAL.read_text().split()[0])
    if low - ports.SPAN >= 1024:
        middle = low - ports.SPAN // 2
        assert all(low - ports.SPAN <= port < middle for port in services)
        assert all(middle <= port < low for port in sandboxes)


def test_with_no_room_below_the_range_the_kernels_ports_are_not_given_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    narrow = tmp_path / "ip_local_port_range"
    narrow.write_text("2000\t60999\n")
    monkeypatch.setattr(ports, "EPHEMERAL", narrow)
    given = [ports.free_port() for _ in range(200)]
    assert len(set(given)) == len(given) and all(port >= 2000 for port in given)
