"""Issue 21, item 1: floods of connections that never prove themselves cannot starve a receiver.

Channel level (Ray-free): 1,000 plain connections (silent, garbage, slow trickles, half frames,
oversized length prefixes) from another process, as this user or as ``nobody``, half of them before
the real sender attaches and half while it attaches and streams: every message arrives intact and in
order. A sender whose connection a receiver dropped before welcoming it connects again and replays.
Grid level: the same flood against every channel receiver of a 2x1 tcp grid, opened during wiring
(before the first sample) and continued while it streams: bit-exact, no restart.
"""
from __future__ import annotations

import os
import threading
import time

import pytest

from bidl_runtime.channels import ChannelTimeout, attach_sender, create_receiver
from bidl_runtime.channels.base import Sender
from flood import Flood, other_user
from test_channels import SPECS, assert_equal, make_tensors

N = 40
WHO = ["same user", "another user"]


def flood_user(who: str):
    """The flooder's identity: None (this user), or another user's (skips when that is impossible here)."""
    if who == "same user":
        return None
    as_user, why = other_user()
    if as_user is None:
        pytest.skip(f"flood from another user: {why}")
    return as_user


@pytest.mark.parametrize("order", ["sender first", "flood first"])
@pytest.mark.parametrize("who", WHO)
def test_a_flood_of_unproven_connections_never_starves_the_sender(who, order):
    """``sender first``: the sender attaches while the receiver is not serving yet (a cell still wiring),
    500 connections queue up behind it, then the receiver starts. ``flood first``: the receiver serves
    while 500 arrive, then the sender attaches. Either way 500 more arrive while it streams."""
    as_user = flood_user(who)
    rx = create_receiver("t:flood", SPECS, transport="tcp", hello_timeout_s=3)
    desc = rx.descriptor
    target = [(desc.address["host"], desc.address["port"])]
    got: list = []
    errors: list = []

    def receive() -> None:   # then the receiver serves its listener throughout, as a cell does
        try:
            for _ in range(N):
                got.append(rx.recv_copy(timeout=20))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    th = threading.Thread(target=receive, daemon=True)
    t0 = time.monotonic()
    tx = flood = None
    try:
        if order == "sender first":
            tx = attach_sender(desc)
            flood = Flood(target, 1000, as_user)   # 500 behind the sender, nobody accepting yet
            th.start()
        else:
            th.start()
            flood = Flood(target, 1000, as_user)   # 500 while the receiver serves, before the sender
            tx = attach_sender(desc)
        t_half = time.monotonic() - t0
        flood.go_on()                              # 500 more while it streams
        for i in range(N):
            tx.send(make_tensors(i), {"sample": i}, timeout=20)
        th.join(60)
        reconnects = getattr(tx.stats, "reconnects", None)
    finally:
        if tx is not None:
            tx.close()
        opened, refused = flood.stop() if flood is not None else (0, 0)
        rx.close()
    assert not errors and not th.is_alive(), errors
    assert [m["sample"] for m, _ in got] == list(range(N))
    for i, (_, tensors) in enumerate(got):
        assert_equal(tensors, make_tensors(i))
    assert opened + refused == 1000 and flood.first[0] > 0, (opened, refused, flood.first)
    print(f"\n{who}, {order}: {N} messages exact in {time.monotonic() - t0:.2f} s; flood: {flood.first[0]} "
          f"connections opened in {t_half:.2f} s before streaming, {opened} in all, {refused} refused (listener "
          f"closed); receiver dropped {rx.stats.rejected} (last: {rx.stats.last_rejected}); sender reconnects "
          f"{reconnects}")
    if order == "flood first":   # (sender first: it is in before the receiver reads any of them)
        assert rx.stats.rejected > 0


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_a_sender_dropped_before_its_welcome_connects_again_and_replays(transport, monkeypatch):
    """The sender's first connection says no hello (as if it came late); the receiver drops it as one
    more unproven connection. The two messages the sender wrote on it meanwhile are replayed on a new
    connection, in order, and the stream goes on."""
    real_hello = Sender._hello
    said: list = []

    def hello_late_once(self, deadline: float, to: float) -> None:
        if not said:
            said.append("withheld")
            return
        real_hello(self, deadline, to)

    monkeypatch.setattr(Sender, "_hello", hello_late_once)
    rx = create_receiver("t:redial", SPECS, transport=transport, hello_timeout_s=0.5)
    tx = attach_sender(rx.descriptor)
    with rx, tx:
        tx.send(make_tensors(0), {"sample": 0})
        tx.send(make_tensors(1), {"sample": 1})   # both slots used, no welcome yet: kept for a replay
        with pytest.raises(ChannelTimeout, match="a sender to attach"):
            rx.recv(timeout=1.5)                  # its first frame is no hello: dropped
        assert rx.stats.rejected == 1 and "not a hello" in rx.stats.last_rejected
        got: list = []
        th = threading.Thread(target=lambda: got.extend(rx.recv_copy(timeout=20) for _ in range(4)), daemon=True)
        th.start()
        tx.send(make_tensors(2), {"sample": 2}, timeout=20)   # waits for a credit: sees the drop, reconnects
        tx.send(make_tensors(3), {"sample": 3}, timeout=20)
        th.join(30)
        assert [m["sample"] for m, _ in got] == [0, 1, 2, 3]
        for i, (_, tensors) in enumerate(got):
            assert_equal(tensors, make_tensors(i))
        assert tx.stats.reconnects == 1 and rx.stats.rejected == 1


def test_budgets_keep_the_newest_unproven_connection_out_only_while_all_are_young():
    """Per-source budget 4, grace 0.3 s: a fifth silent connection is refused while the four are
    young; once they are past the grace period the oldest is evicted for a newcomer instead."""
    import socket
    rx = create_receiver("t:budget", SPECS, transport="tcp", max_pending_per_source=4, hello_grace_s=0.3,
                         hello_timeout_s=30)
    addr = (rx.descriptor.address["host"], rx.descriptor.address["port"])
    socks = []
    with rx:
        try:
            for i in range(5):
                socks.append(socket.create_connection(addr, timeout=5))
            with pytest.raises(ChannelTimeout):
                rx.recv(timeout=0.1)
            assert rx.stats.rejected == 1 and "more than 4 unproven connections" in rx.stats.last_rejected
            assert socks[4].recv(1) == b""        # the newest went
            time.sleep(0.4)
            socks.append(socket.create_connection(addr, timeout=5))
            with pytest.raises(ChannelTimeout):
                rx.recv(timeout=0.1)
            assert rx.stats.rejected == 2
            socks[0].settimeout(5)
            assert socks[0].recv(1) == b""        # now the oldest went, the newcomer stays
            assert len(rx._pending) == 4
        finally:
            for s in socks:
                s.close()


def test_another_users_connection_is_dropped_at_once():
    """A connection from this machine by another user never holds a place (tcp_same_user_only)."""
    as_user, why = other_user()
    if as_user is None:
        pytest.skip(why)
    rx = create_receiver("t:uid", SPECS, transport="tcp", hello_timeout_s=30)
    desc = rx.descriptor
    with rx:
        flood = Flood([(desc.address["host"], desc.address["port"])], 20, as_user)
        try:
            t0 = time.monotonic()
            while rx.stats.rejected < flood.first[0] and time.monotonic() - t0 < 10:
                with pytest.raises(ChannelTimeout):
                    rx.recv(timeout=0.2)
            assert rx.stats.rejected == flood.first[0] == 10 and not rx._pending
            assert f"(the run's user is uid {os.getuid()})" in rx.stats.last_rejected
        finally:
            flood.go_on()
            flood.stop()


# ------------------------------------------------------------------------------ grid level

T = 4


@pytest.mark.slow
@pytest.mark.parametrize("who", WHO)
def test_a_flood_during_wiring_and_streaming_does_not_restart_a_tcp_grid(ray_local, who, tiny_artifacts, monkeypatch):
    """2x1 grid over tcp. During wiring, once every receiver listens (the cells' and the driver's) and
    before any sender attaches, 500 connections are spread over those new listening ports, so each
    sender queues up behind them; 500 more while the samples stream. Bit-exact, no restart."""
    from bidl_runtime.api import GridJob
    from bidl_runtime.driver import grid as grid_module
    from bidl_runtime.runtime_config import RuntimeConfig
    from conftest import glyph_samples, tiny_glyphs
    from test_security import tcp_listeners

    as_user = flood_user(who)
    c = tiny_glyphs(T)
    rcfg = RuntimeConfig(metrics=False, transport="tcp")
    plan = GridJob(c, grid=(2, 1), runtime=rcfg, artifacts=tiny_artifacts).plan()
    items = glyph_samples(T, 8, seed=7)
    floods: list[Flood] = []
    seen: dict = {}
    real_create = grid_module.create_receiver

    def create_then_flood(*args, **kw):   # the driver's result receiver: the cells' already listen
        rx = real_create(*args, **kw)
        if not floods:
            now = {(a, p) for a, p, _, _ in tcp_listeners(seen["pids"])}
            seen["targets"] = sorted(now - seen["before"])
            floods.append(Flood(seen["targets"], 1000, as_user))   # the first 500, before any sender
        return rx

    class FloodedGrid(grid_module.Grid):
        def wire(self) -> None:
            seen["pids"] = set(self.pids.values()) | {os.getpid()}
            seen["before"] = {(a, p) for a, p, _, _ in tcp_listeners(seen["pids"])}
            monkeypatch.setattr(grid_module, "create_receiver", create_then_flood)
            try:
                super().wire()
            finally:
                monkeypatch.setattr(grid_module, "create_receiver", real_create)

    def samples():
        for i, item in enumerate(items):
            if i == 1:
                floods[0].go_on()   # the other 500 while the grid streams
            yield item

    g = FloodedGrid(plan, rcfg)
    t0 = time.monotonic()
    try:
        report = g.run(samples(), progress=False, verify=True)
    finally:
        g.close()
        opened, refused = floods[0].stop() if floods else (0, 0)
    rejected = sum(ch["rejected_connections"] for cell in report.cells for ch in cell["channels_in"].values())
    rejected += sum(ch["rejected_connections"] for ch in report.driver_channels["channels_in"].values())
    reconnects = sum(ch.get("reconnects", 0) for cell in report.cells for ch in cell["channels_out"].values())
    print(f"\n{who}: {len(seen['targets'])} receivers flooded; {floods[0].first[0]} connections opened during "
          f"wiring, {opened} in all, {refused} refused (listeners closed); receivers dropped {rejected}; sender "
          f"reconnects {reconnects}; run {time.monotonic() - t0:.1f} s")
    assert report.verify == {"equal": len(items), "compared": len(items), "max_abs_diff": 0.0}
    assert report.restarts == [] and all(cell["samples"] == len(items) for cell in report.cells)
    assert len(seen["targets"]) == 4 and floods[0].first == (500, 0) and opened + refused == 1000
    assert rejected >= 500   # every connection of the first half was accepted and dropped
