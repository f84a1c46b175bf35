"""Event-gated channels (bidl_runtime.channels): correctness, credits, timeouts, faults, zero copy, cleanup.

Ray-free: cross-process cases use multiprocessing 'spawn' children (functions below are their targets).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import socket
import struct
import threading
import time

import msgpack
import pytest
import torch

from bidl_models.specs import TensorSpec
from bidl_runtime.channels import (ChannelClosed, ChannelConfig, ChannelDescriptor, ChannelError, ChannelTimeout,
                                   ChecksumError, Layout, PeerDied, attach_sender, create_receiver, get_transport,
                                   new_secret, sweep_stale, transports, wait_any)

SPECS = [TensorSpec("x", (2, 3, 4), "float32"), TensorSpec("idx", (5,), "int64"),
         TensorSpec("mask", (3,), "bool"), TensorSpec("h", (7,), "float16"), TensorSpec("s", (), "float32")]
TRANSPORTS = ["shm", "tcp"]
CTX = mp.get_context("spawn")


def make_tensors(i: int) -> dict[str, torch.Tensor]:
    """Deterministic, distinct content per message index (all dtypes of SPECS)."""
    g = torch.Generator().manual_seed(1000 + i)
    return {"x": torch.randn(2, 3, 4, generator=g), "idx": torch.randint(-2**40, 2**40, (5,), generator=g),
            "mask": torch.rand(3, generator=g) > 0.5, "h": torch.randn(7, generator=g).half(),
            "s": torch.tensor(float(i))}


def assert_equal(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        assert torch.equal(got[k], want[k]), k


def shm_entries(pid: int | None = None) -> set[str]:
    """Slot files in /dev/shm created by process ``pid`` (default: this one; other users may be running)."""
    prefix = f"bidl-ch.{os.getpid() if pid is None else pid}."
    return {f for f in os.listdir("/dev/shm") if f.startswith(prefix)}


@pytest.fixture(autouse=True)
def no_leftovers():
    before = shm_entries()
    yield
    assert shm_entries() - before == set(), "a test left files in /dev/shm"


def pair(transport: str, **cfg):
    rx = create_receiver("t:edge", SPECS, transport=transport, **cfg)
    return rx, attach_sender(rx.descriptor)


# ---------------------------------------------------------------- spawn children (module-level targets)

def _child_sender(desc: ChannelDescriptor, n: int, ctl) -> None:
    """Sends n messages (alternating send/reserve+commit), then a stop, then closes.
    For shm, after a 'poke' request, overwrites slot 0 through its own mapping (zero-copy probe)."""
    torch.set_num_threads(1)
    tx = attach_sender(desc)
    for i in range(n):
        t = make_tensors(i)
        if i % 2:
            views = tx.reserve(timeout=20)
            for k, v in views.items():
                v.copy_(t[k])
            tx.commit({"sample": i, "slice": i % 3, "note": f"m{i}"})
        else:
            tx.send(t if i % 4 else list(t.values()), {"sample": i, "slice": i % 3, "note": f"m{i}"}, timeout=20)
    if ctl is not None and ctl.poll(20) and ctl.recv() == "poke":
        tx._views_for(0)["s"].fill_(-123.0)  # deliberately writing into a slot the receiver holds
        ctl.send("poked")
    tx.send_control("stop", {"sample": n})
    tx.close()


def _child_sender_then_hang(desc: ChannelDescriptor, ready) -> None:
    tx = attach_sender(desc)
    tx.send(make_tensors(0), {"sample": 0})
    ready.send(os.getpid())
    time.sleep(60)


def _child_receiver_holding(transport: str, conn) -> None:
    """Creates a receiver, ships its descriptor, receives without releasing, then blocks in recv."""
    rx = create_receiver("t:held", SPECS, transport=transport, depth=2)
    conn.send(rx.descriptor)
    msgs = [rx.recv(timeout=20), rx.recv(timeout=20)]
    conn.send("holding")
    try:
        rx.recv(timeout=60)  # idle: blocks in the kernel until killed
    finally:
        del msgs


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- round trips

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_roundtrip_in_process(transport):
    rx, tx = pair(transport, depth=3)
    with rx, tx:
        sent = [make_tensors(i) for i in range(7)]
        for i, t in enumerate(sent):
            if i % 3 == 0:
                tx.send(t, {"sample": i, "slice": 1})
            elif i % 3 == 1:
                tx.send(list(t.values()), {"sample": i, "slice": 1})
            else:
                views = tx.reserve()
                for k, v in views.items():
                    v.copy_(t[k])
                tx.commit({"sample": i, "slice": 1, "extra": [1, "a"]})
            with rx.recv(timeout=5) as msg:
                assert msg.seq == i and msg.kind == "data" and msg.meta["sample"] == i and msg.meta["slice"] == 1
                assert_equal(msg.tensors, t)
        assert msg.released
        tx.send(sent[0], {"sample": 100})
        meta, copy = rx.recv_copy(timeout=5)
        tx.send(sent[1], {"sample": 101})  # may reuse the slot the copy came from
        out = {k: torch.empty_like(v) for k, v in sent[1].items()}
        assert rx.recv_into(out, timeout=5)["sample"] == 101
        assert meta["sample"] == 100
        assert_equal(copy, sent[0])
        assert_equal(out, sent[1])
        tx.send_control("error", {"sample": 5, "error": "cell[1,0] raised"})
        ctl = rx.recv(timeout=5)
        assert (ctl.kind, ctl.is_data, ctl.tensors, ctl.meta["error"]) == ("error", False, {}, "cell[1,0] raised")
        s_rx, s_tx = rx.stats.snapshot(), tx.stats.snapshot()
        nbytes = sum(s.nbytes for s in SPECS)
        assert s_rx["messages"] == s_tx["messages"] == 9 and s_rx["bytes"] == 9 * nbytes
        assert s_rx["control_messages"] == 1 and s_rx["hop_ms_median"] is not None


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_roundtrip_across_processes(transport):
    """A spawn child sends 6 messages (send and reserve/commit, list and dict), a stop, then closes;
    order, metadata and exact content arrive; on shm the tensors are views of the shared slots."""
    rx = create_receiver("t:xproc", SPECS, transport=transport, depth=2)
    here, there = CTX.Pipe()
    p = CTX.Process(target=_child_sender, args=(rx.descriptor, 6, there if transport == "shm" else None))
    p.start()
    try:
        held = None
        for i in range(6):
            msg = rx.recv(timeout=30)
            assert (msg.seq, msg.meta) == (i, {"sample": i, "slice": i % 3, "note": f"m{i}", "kind": "data"})
            assert_equal(msg.tensors, make_tensors(i))
            if transport == "shm":
                lo, size = rx.buffer_range()
                for v in msg.tensors.values():
                    assert lo <= v.data_ptr() and v.data_ptr() + v.nbytes <= lo + size
            if i == 4 and transport == "shm":
                held = msg  # slot 0 (messages alternate slots 0/1), kept unreleased
            else:
                msg.release()
        if transport == "shm":
            assert held._slot == 0
            here.send("poke")
            assert here.recv() == "poked"
            assert held.tensors["s"].item() == -123.0  # the other process's write shows through: zero copy
            held.release()
        stop = rx.recv(timeout=30)
        assert stop.kind == "stop" and stop.meta["sample"] == 6
        with pytest.raises(ChannelClosed, match="sender closed"):
            rx.recv(timeout=30)
    finally:
        p.join(30)
        rx.close()
    assert p.exitcode == 0


# ---------------------------------------------------------------- credits / back-pressure

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_sender_blocks_until_release(transport):
    rx, tx = pair(transport, depth=2)
    with rx, tx:
        tx.send(make_tensors(0), {"sample": 0})
        tx.send(make_tensors(1), {"sample": 1})
        assert tx.credits == 0
        m0 = rx.recv(timeout=5)
        m1 = rx.recv(timeout=5)
        t0 = time.monotonic()
        with pytest.raises(ChannelTimeout, match=r"channel 't:edge'.*sender timed out.*credit"):
            tx.send(make_tensors(2), timeout=0.3)
        assert 0.25 < time.monotonic() - t0 < 2.0
        assert_equal(m0.tensors, make_tensors(0))  # the blocked sender did not touch held slots
        assert_equal(m1.tensors, make_tensors(1))

        done = threading.Event()

        def late_release():
            time.sleep(0.3)
            done.set()
            m0.release()

        th = threading.Thread(target=late_release)
        t0 = time.monotonic()
        th.start()
        tx.send(make_tensors(2), {"sample": 2}, timeout=5)  # blocks until the release
        assert done.is_set() and time.monotonic() - t0 >= 0.25
        th.join()
        assert tx.stats.snapshot()["blocked_s_total"] >= 0.25
        assert_equal(m1.tensors, make_tensors(1))
        m1.release()
        with rx.recv(timeout=5) as m2:
            assert m2.meta["sample"] == 2 and m2._slot == 0  # went into the slot released first
            assert_equal(m2.tensors, make_tensors(2))


def test_depth_configurable():
    rx, tx = pair("shm", depth=4)
    with rx, tx:
        for i in range(4):
            tx.send(make_tensors(i), timeout=1)
        with pytest.raises(ChannelTimeout):
            tx.reserve(timeout=0.1)
        msgs = [rx.recv(timeout=1) for _ in range(4)]
        assert sorted(m._slot for m in msgs) == [0, 1, 2, 3]


# ---------------------------------------------------------------- timeouts and errors

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_recv_timeouts_name_channel(transport):
    rx = create_receiver("cell[0,1]->cell[1,1]", SPECS, transport=transport)
    with rx:
        t0 = time.monotonic()
        with pytest.raises(ChannelTimeout, match=r"channel 'cell\[0,1\]->cell\[1,1\]': receiver timed out after "
                                                 r"0.2 s waiting for a sender to attach") as ei:
            rx.recv(timeout=0.2)
        assert isinstance(ei.value, TimeoutError) and ei.value.channel == "cell[0,1]->cell[1,1]"
        assert time.monotonic() - t0 < 1.5
        tx = attach_sender(rx.descriptor)
        with pytest.raises(ChannelTimeout, match="waiting for the next message's sent event"):
            rx.recv(timeout=0.2)
        tx.send(make_tensors(0))  # still usable after a timeout
        with rx.recv(timeout=5) as m:
            assert_equal(m.tensors, make_tensors(0))
        tx.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_layout_mismatch_raises_value_error(transport):
    rx, tx = pair(transport)
    with rx, tx:
        good = make_tensors(0)
        cases = [
            ({**good, "x": torch.zeros(2, 3, 5)}, r"tensor 'x' has shape \[2, 3, 5\], expected \[2, 3, 4\]"),
            ({**good, "idx": torch.zeros(5, dtype=torch.int32)}, r"tensor 'idx' has dtype int32, expected int64"),
            ({k: v for k, v in good.items() if k != "h"}, r"missing \['h'\]"),
            ({**good, "extra": torch.zeros(1)}, r"unexpected \['extra'\]"),
            (list(good.values())[:3], r"got 3 tensors, the layout has 5"),
            ({**good, "s": 1.0}, r"tensor 's' is a float, expected a torch.Tensor"),
        ]
        for bad, pattern in cases:
            with pytest.raises(ValueError, match=r"channel 't:edge': .*" + pattern):
                tx.send(bad)
        with pytest.raises(ValueError, match="kind 'weird'"):
            tx.send(good, {"kind": "weird"})
        with pytest.raises(ValueError, match="exceeds the limit"):
            tx.send_control("stop", {"blob": "x" * 70000})
        assert tx.credits == 2  # failed sends consumed nothing
        tx.send(good, {"sample": 1})
        assert rx.recv_copy(timeout=5)[0]["sample"] == 1


class _CorruptingProxy(threading.Thread):
    """TCP proxy that flips one byte at a given offset of the sender->receiver stream."""

    def __init__(self, host: str, port: int, flip_at: int):
        super().__init__(daemon=True)
        self.target, self.flip_at = (host, port), flip_at
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]

    def run(self) -> None:
        a, _ = self.lsock.accept()
        b = socket.create_connection(self.target)

        def back() -> None:
            try:
                while data := b.recv(65536):
                    a.sendall(data)
            except OSError:
                pass

        threading.Thread(target=back, daemon=True).start()
        seen = 0
        try:
            while data := a.recv(65536):
                if seen <= self.flip_at < seen + len(data):
                    data = bytearray(data)
                    data[self.flip_at - seen] ^= 0x01
                seen += len(data)
                b.sendall(data)
            b.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            a.close()
            self.lsock.close()


def test_tcp_checksum_mismatch_detected():
    rx = create_receiver("t:crc", SPECS, transport="tcp", tcp_host="127.0.0.1")
    desc = rx.descriptor
    with rx:
        # probe the stream length of hello + first frame, to flip the last payload byte of message 1
        probe_rx = create_receiver("t:crc", SPECS, transport="tcp", tcp_host="127.0.0.1")
        ptx = attach_sender(probe_rx.descriptor)
        n0 = len(ptx._link.encode(ptx.hello_message)) + 4  # same process and layout: same hello size
        ptx.close(); probe_rx.close()
        t = make_tensors(0)
        env = ["D", 0, 0, time.time_ns(), {"sample": 0, "kind": "data"}, rx.layout.spec_dicts, rx.layout.nbytes, 0]
        frame = len(msgpack.packb(env, use_bin_type=True)) + 4 + rx.layout.nbytes
        proxy = _CorruptingProxy(desc.address["host"], desc.address["port"], flip_at=n0 + frame - 1)
        proxy.start()
        bad = ChannelDescriptor(desc.name, desc.transport, desc.specs, desc.depth, desc.token,
                                {**desc.address, "port": proxy.port}, desc.config)
        tx = attach_sender(bad)
        tx.send(t, {"sample": 0, "slice": 2})
        with pytest.raises(ChecksumError, match=r"channel 't:crc'.*message 0 \(sample 0, slice 2\).*crc32") as ei:
            rx.recv(timeout=5)
        assert isinstance(ei.value, ValueError)
        tx.send(make_tensors(1), {"sample": 1})  # the slot came back and the stream is still aligned
        with rx.recv(timeout=5) as m:
            assert m.meta["sample"] == 1
            assert_equal(m.tensors, make_tensors(1))
        tx.close()


def test_short_poll_timeouts_do_not_break_tcp_frames():
    """Both ends poll with 5-10 ms timeouts (retrying on ChannelTimeout) while 8 MB frames take longer
    than that to cross, and the receiver is slow: every message still arrives intact."""
    big = [TensorSpec("a", (1024, 1024), "float32"), TensorSpec("b", (1024, 1024), "float32")]
    rx = create_receiver("t:poll", big, transport="tcp", depth=2, tcp_host="127.0.0.1")
    tx = attach_sender(rx.descriptor)
    n, errors = 4, []
    data = [{"a": torch.full((1024, 1024), float(i)), "b": torch.arange(1024.0 * 1024).view(1024, 1024) + i}
            for i in range(n)]

    def produce() -> None:
        try:
            for i in range(n):
                while True:
                    try:
                        tx.send(data[i], {"sample": i}, timeout=0.01)
                        break
                    except ChannelTimeout:
                        continue
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    th = threading.Thread(target=produce)
    th.start()
    got = 0
    with rx, tx:
        while got < n:
            try:
                msg = rx.recv(timeout=0.005)
            except ChannelTimeout:
                continue
            with msg:
                assert msg.meta["sample"] == got
                assert_equal(msg.tensors, data[got])
            got += 1
            time.sleep(0.05)  # a busy receiver: the sender's next frame stalls in the kernel meanwhile
        th.join()
    assert errors == []


# ---------------------------------------------------------------- peer death and close

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_sender_death_is_detected(transport):
    rx = create_receiver("t:dead-sender", SPECS, transport=transport)
    here, there = CTX.Pipe()
    p = CTX.Process(target=_child_sender_then_hang, args=(rx.descriptor, there))
    p.start()
    try:
        assert here.poll(30)
        pid = here.recv()
        with rx.recv(timeout=10) as m:
            assert_equal(m.tensors, make_tensors(0))
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(PeerDied, match=r"channel 't:dead-sender': receiver: .*(gone|reset)"):
            rx.recv(timeout=20)
        assert time.monotonic() - t0 < 3.0  # EOF, not the timeout
    finally:
        p.join(10)
        rx.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_receiver_death_unblocks_sender_and_idle_cpu(transport):
    """The child receiver holds both slots and blocks in recv: it uses ~no CPU; when it is killed the
    sender blocked waiting for a credit gets PeerDied at once."""
    here, there = CTX.Pipe()
    p = CTX.Process(target=_child_receiver_holding, args=(transport, there))
    p.start()
    try:
        assert here.poll(30)
        tx = attach_sender(here.recv())
        tx.send(make_tensors(0))
        tx.send(make_tensors(1))
        assert here.poll(30) and here.recv() == "holding"
        time.sleep(0.1)
        c0, t0 = _cpu_seconds(p.pid), time.monotonic()
        with pytest.raises(ChannelTimeout, match="credit"):
            tx.send(make_tensors(2), timeout=1.5)
        cpu = _cpu_seconds(p.pid) - c0
        assert cpu <= 0.02 * (time.monotonic() - t0) + 0.011, f"idle receiver used {cpu:.3f} s CPU"
        killer = threading.Timer(0.3, p.kill)
        killer.start()
        t0 = time.monotonic()
        with pytest.raises(PeerDied, match=r"sender: .*(receiver process is gone|peer is gone)"):
            tx.send(make_tensors(2), timeout=20)
        assert time.monotonic() - t0 < 3.0
        tx.close()
    finally:
        p.join(10)
    assert shm_entries(p.pid) == set()


def test_receiver_close_reaches_blocked_sender():
    rx, tx = pair("shm", depth=1)
    tx.send(make_tensors(0))
    threading.Timer(0.2, rx.close).start()
    with pytest.raises(ChannelClosed, match="receiver closed"):
        tx.send(make_tensors(1), timeout=10)
    with pytest.raises(ChannelClosed):
        tx.send(make_tensors(1), timeout=1)
    tx.close()
    with pytest.raises(ChannelClosed, match="receiver is closed"):
        rx.recv(timeout=1)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_receiver_close_seen_by_sender_with_credits(transport):
    rx, tx = pair(transport, depth=2)
    tx.send(make_tensors(0))
    rx.recv(timeout=5).release()
    rx.close()
    time.sleep(0.05)
    with pytest.raises(ChannelClosed, match="receiver closed"):
        for i in range(3):  # a credit is available, so the failure shows on the write or the next wait
            tx.send(make_tensors(i), timeout=2)
    tx.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_release_from_another_thread_while_recv_blocks(transport):
    rx, tx = pair(transport, depth=1)
    with rx, tx:
        tx.send(make_tensors(0), {"sample": 0})
        first = rx.recv(timeout=5)
        errors = []

        def worker() -> None:
            try:
                time.sleep(0.1)
                first.release()  # on this thread, while the main thread is blocked in rx.recv
                tx.send(make_tensors(1), {"sample": 1}, timeout=5)
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        th = threading.Thread(target=worker)
        th.start()
        with rx.recv(timeout=5) as second:
            assert second.meta["sample"] == 1
            assert_equal(second.tensors, make_tensors(1))
        th.join()
        assert errors == []


def test_attach_to_closed_receiver_fails_clearly():
    rx = create_receiver("t:gone", SPECS)
    desc = rx.descriptor
    rx.close()
    with pytest.raises(PeerDied, match="slot file .* is gone"):
        attach_sender(desc)
    rx = create_receiver("t:gone", SPECS, transport="tcp")
    desc = rx.descriptor
    rx.close()
    with pytest.raises(PeerDied, match="not listening"):
        attach_sender(desc)


# ---------------------------------------------------------------- zero copy, cleanup, misc

def test_shm_refuses_other_host_and_bad_token():
    import dataclasses
    rx = create_receiver("t:host", SPECS)
    with rx:
        d = rx.descriptor
        other = dataclasses.replace(d, address={**d.address, "boot_id": "another-machine", "host": "node-b"})
        with pytest.raises(ChannelError, match="created on host 'node-b'.*use transport 'tcp'"):
            attach_sender(other)
        intruder = dataclasses.replace(d, token="0" * 16)
        tx = attach_sender(intruder)  # maps and connects, but the receiver drops its hello and keeps listening
        with pytest.raises(ChannelTimeout, match="waiting for a sender to attach"):
            rx.recv(timeout=0.5)
        assert rx.stats.rejected == 1 and "token differs" in rx.stats.last_rejected
        tx.close()


def test_shm_zero_copy_views():
    rx, tx = pair("shm")
    with rx, tx:
        views = tx.reserve()
        for k, v in make_tensors(3).items():
            views[k].copy_(v)
        tx.commit({"sample": 3})
        msg = rx.recv(timeout=5)
        lo, size = rx.buffer_range()
        assert all(lo <= t.data_ptr() < lo + size for t in msg.tensors.values())
        views["x"][0, 0, 0] = 42.0  # same physical memory, mapped at another address in the sender
        assert msg.tensors["x"][0, 0, 0].item() == 42.0
        assert views["x"].data_ptr() != msg.tensors["x"].data_ptr()
        msg.release()


def test_shm_files_are_cleaned_up():
    rx = create_receiver("t:clean", SPECS)
    path = rx.descriptor.address["path"]
    assert os.path.exists(path)
    tx = attach_sender(rx.descriptor)
    assert not os.path.exists(path)  # unlinked once both ends map it: nothing can leak after this
    tx.send(make_tensors(0))
    msg = rx.recv(timeout=5)
    tx.close()
    rx.close()
    assert msg.tensors["x"].sum().item() == make_tensors(0)["x"].sum().item()  # still mapped while referenced
    rx2 = create_receiver("t:clean2", SPECS)
    p2 = rx2.descriptor.address["path"]
    del rx2  # never closed, never attached: the finalizer unlinks
    import gc
    gc.collect()
    assert not os.path.exists(p2)
    stale = f"/dev/shm/bidl-ch.{2**22 + 12345}.deadbeef.t"  # a pid above pid_max: a dead creator
    open(stale, "wb").close()
    assert stale in sweep_stale()
    assert not os.path.exists(stale)


def test_config_descriptor_and_registry():
    with pytest.raises(ValueError, match="depth"):
        ChannelConfig(depth=0)
    with pytest.raises(ValueError, match="finite"):
        ChannelConfig(recv_timeout_s=float("inf"))
    assert ChannelConfig.from_dict(ChannelConfig(depth=3).to_dict()) == ChannelConfig(depth=3)
    with pytest.raises(ValueError, match=r"unknown channel transport 'rdma'.*\['cuda', 'shm', 'tcp'\]"):
        create_receiver("t", SPECS, transport="rdma")
    assert {"shm", "tcp"} <= set(transports())
    assert get_transport("shm").name == "shm"
    rx = create_receiver("t:desc", SPECS, depth=3)
    with rx:
        d = pickle.loads(pickle.dumps(rx.descriptor))
        d2 = ChannelDescriptor.from_dict(msgpack.unpackb(msgpack.packb(d.to_dict())))
        assert d2.to_dict() == rx.descriptor.to_dict() and d2.depth == 3 and d2.specs == tuple(SPECS)
        with pytest.raises(TypeError, match="descriptor"):
            pickle.dumps(rx)
        tx = attach_sender(d2)
        with pytest.raises(TypeError, match="descriptor"):
            pickle.dumps(tx)
        tx.send(make_tensors(1))
        assert_equal(rx.recv_copy(timeout=5)[1], make_tensors(1))
        tx.close()


def test_wait_any_blocks_until_ready():
    rx1, tx1 = pair("shm")
    rx2, tx2 = pair("tcp")
    with rx1, tx1, rx2, tx2:
        assert wait_any([rx1, rx2], timeout=0.2) in ([], [rx1], [rx2], [rx1, rx2])  # pending connects may show
        for rx in (rx1, rx2):
            with pytest.raises(ChannelTimeout):
                rx.recv(timeout=0.05)  # accepts the connection, nothing to read
        t0 = time.monotonic()
        assert wait_any([rx1, rx2], timeout=0.2) == []
        assert time.monotonic() - t0 >= 0.15
        threading.Timer(0.1, lambda: tx2.send(make_tensors(0))).start()
        assert wait_any([rx1, rx2], timeout=5) == [rx2]
        rx2.recv(timeout=1).release()


# ---------------------------------------------------------------- authentication and intruders

def _intruder(desc: ChannelDescriptor) -> socket.socket:
    """A raw connection to a receiver's listening address (what anyone on the node can open)."""
    if desc.transport == "tcp":
        return socket.create_connection((desc.address["host"], desc.address["port"]), timeout=5)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.settimeout(5)
    s.connect("\0" + desc.address["uds"])
    return s


def _framed(desc: ChannelDescriptor, body: bytes) -> bytes:
    """``body`` as one message on the control socket: a datagram (shm) or u32 length + body (tcp)."""
    return body if desc.transport == "shm" else struct.pack("!I", len(body)) + body


def _attacks(desc: ChannelDescriptor) -> dict[str, bytes | None]:
    """What an intruder sends first; None: nothing (a silent connection)."""
    from bidl_runtime.channels import auth
    wrong_key = bytes.fromhex(new_secret())
    bad_hello, _ = auth.hello(wrong_key, desc.name, desc.token, Layout(desc.specs).fingerprint, 1)
    other_token, _ = auth.hello(bytes.fromhex(desc.config.secret), desc.name, "f" * 16,
                                Layout(desc.specs).fingerprint, 1)
    old_hello = ["H", desc.token, Layout(desc.specs).fingerprint, 1]  # the unauthenticated hello of before
    out = {
        "garbage": os.urandom(300),
        "undecodable frame": _framed(desc, b"\xc1" * 40),
        "wrong-secret hello": _framed(desc, msgpack.packb(bad_hello, use_bin_type=True)),
        "hello for another channel": _framed(desc, msgpack.packb(other_token, use_bin_type=True)),
        "old unauthenticated hello": _framed(desc, msgpack.packb(old_hello, use_bin_type=True)),
        "data before hello": _framed(desc, msgpack.packb(["D", 0, 0, 0, {"sample": 0}], use_bin_type=True)),
        "silent": None,
    }
    if desc.transport == "tcp":
        out["oversized length prefix"] = struct.pack("!I", 2**31 - 1) + b"x" * 64
        out["half frame"] = struct.pack("!I", 200) + b"\x93" * 50   # then nothing: waits for 150 more bytes
    else:
        out["oversized datagram"] = b"\x90" * 70000
    return out


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_intruders_before_the_sender_are_dropped_and_the_run_goes_on(transport, caplog):
    """Garbage, oversized and half frames, wrong-secret and replayed hellos, silent connections: all
    arrive before the real sender, none is read past its first frame, none delays the real sender
    (the silent and half-frame ones would hold it for hello_timeout_s if they did), every one is
    logged and counted, and the stream is exact."""
    rx = create_receiver("t:intruded", SPECS, transport=transport, hello_timeout_s=20)
    desc = rx.descriptor
    socks = []
    attacks = _attacks(desc)
    for what, data in attacks.items():
        s = _intruder(desc)
        if data is not None:
            try:
                s.sendall(data)
            except OSError:
                pass
        socks.append(s)
    tx = attach_sender(desc)
    t0 = time.monotonic()
    with rx, tx:
        for i in range(4):
            tx.send(make_tensors(i), {"sample": i}, timeout=10)
            with rx.recv(timeout=10) as m:
                assert m.meta["sample"] == i
                assert_equal(m.tensors, make_tensors(i))
        assert time.monotonic() - t0 < 10, "an intruder delayed the real sender"
        assert rx.connected and rx.peer.endswith(f"(pid {os.getpid()})")
        assert rx.stats.rejected == len(attacks), rx.stats.last_rejected
        assert rx.stats.snapshot()["rejected_connections"] == len(attacks)
    logged = " ".join(r.getMessage() for r in caplog.records if r.name == "bidl_runtime.channels")
    for why in ("MAC does not verify (wrong secret)", "token differs", "not a hello"):
        assert why in logged, logged
    if transport == "tcp":
        assert "announces 2147483647 B" in logged
    else:
        assert "larger than 512 B" in logged
    for s in socks:
        s.settimeout(5)
        try:
            assert s.recv(100) == b""  # the receiver closed it: nothing was ever sent back
        except (ConnectionResetError, BrokenPipeError):
            pass
        s.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_connections_to_a_live_channel_are_refused(transport):
    """Once the expected sender is in, the listener is closed: later connections get nowhere and the
    stream goes on."""
    rx, tx = pair(transport)
    with rx, tx:
        tx.send(make_tensors(0), {"sample": 0})
        rx.recv(timeout=5).release()
        with pytest.raises(ConnectionRefusedError):
            _intruder(rx.descriptor)
        tx.send(make_tensors(1), {"sample": 1})
        with rx.recv(timeout=5) as m:
            assert_equal(m.tensors, make_tensors(1))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_sender_with_the_wrong_secret_is_dropped(transport):
    rx = create_receiver("t:secret", SPECS, transport=transport, secret=new_secret())
    with rx:
        bad = attach_sender(rx.descriptor, secret=new_secret())  # reaches the socket, cannot prove itself
        bad.send(make_tensors(0), {"sample": 0})
        with pytest.raises(ChannelTimeout, match="a sender to attach"):
            rx.recv(timeout=0.5)
        assert rx.stats.rejected == 1 and "wrong secret" in rx.stats.last_rejected
        with pytest.raises((PeerDied, ChannelError)):
            for i in range(4):  # the receiver hung up on it: the failure shows on a write or the credit wait
                bad.send(make_tensors(i), timeout=2)
        bad.close()
        if transport == "tcp":  # (an shm sender unlinks the slot file when it maps it: one attach per receiver)
            good = attach_sender(rx.descriptor)
            good.send(make_tensors(1), {"sample": 1})
            with rx.recv(timeout=5) as m:
                assert_equal(m.tensors, make_tensors(1))
            good.close()


def test_sender_refuses_a_receiver_that_cannot_prove_the_secret():
    """A fake receiver at the descriptor's address (it accepts and hands out credits) is caught
    before the sender takes any credit from it: at the first send after its message arrived."""
    rx = create_receiver("t:fake", SPECS, transport="tcp", depth=1, tcp_host="127.0.0.1")
    desc = rx.descriptor
    rx.close()
    fake = socket.create_server(("127.0.0.1", 0))
    desc = ChannelDescriptor(desc.name, desc.transport, desc.specs, desc.depth, desc.token,
                             {**desc.address, "port": fake.getsockname()[1]}, desc.config)

    def serve() -> None:
        conn, _ = fake.accept()
        body = msgpack.packb(["K", 0], use_bin_type=True)
        conn.sendall(struct.pack("!I", len(body)) + body)
        time.sleep(3)
        conn.close()

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    tx = attach_sender(desc)
    with pytest.raises(ChannelError, match="did not prove it holds the run's secret"):
        tx.send(make_tensors(0))   # its first message may already be in: checked before this send
        tx.send(make_tensors(1), timeout=5)
    tx.close()
    fake.close()


def test_authenticated_sender_with_another_layout_is_an_error():
    """A sender that proves the secret but has another layout is the run's own bug: an error, not a drop."""
    import dataclasses
    rx = create_receiver("t:layout", SPECS, transport="tcp")
    with rx:
        other = dataclasses.replace(rx.descriptor, specs=tuple(SPECS[:2]))
        tx = attach_sender(other)
        with pytest.raises(ChannelError, match="its layout differs"):
            rx.recv(timeout=5)
        tx.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_decode_errors_on_an_authenticated_link_are_channel_errors(transport):
    """Whatever arrives after the hello, a bad message is a ChannelError naming the channel (never a
    raw msgpack/TypeError), and on tcp an impossible length prefix does not allocate or block."""
    cases = [b"\xc1\xc1\xc1", msgpack.packb(["D", "zero", 0]), msgpack.packb({"a": 1}),
             msgpack.packb(["D", 0, 0, 0, ["not", "a", "map"]]), msgpack.packb(["D", 0, 99, 0, {}]),
             msgpack.packb(["Q"])]
    if transport == "tcp":
        cases.append(None)  # an oversized length prefix
    for body in cases:
        rx, tx = pair(transport)
        with rx, tx:
            tx.send(make_tensors(0), {"sample": 0})
            rx.recv(timeout=5).release()
            raw = tx._link.sock
            if body is None:
                raw.sendall(struct.pack("!I", 2**31 - 1))
            else:
                raw.sendall(body if transport == "shm" else struct.pack("!I", len(body)) + body)
            t0 = time.monotonic()
            with pytest.raises(ChannelError, match=r"channel 't:edge': receiver: ") as ei:
                rx.recv(timeout=5)
            assert type(ei.value) in (ChannelError,), ei.value
            assert time.monotonic() - t0 < 2


def test_half_frame_on_the_link_is_bounded_by_frame_timeout():
    rx, tx = pair("tcp", frame_timeout_s=0.5)
    with rx, tx:
        tx.send(make_tensors(0), {"sample": 0})
        rx.recv(timeout=5).release()
        tx._link.sock.sendall(struct.pack("!I", 100) + b"\x94" * 10)  # then silence
        t0 = time.monotonic()
        with pytest.raises(ChannelTimeout):
            rx.recv(timeout=0.1)
        assert time.monotonic() - t0 < 2.0
        with pytest.raises(ChannelError, match="unusable"):
            rx.recv(timeout=0.1)  # the stream is out of step: it stays an error, no hang


def test_secret_config_and_binding():
    with pytest.raises(ValueError, match="secret"):
        ChannelConfig(secret="not-hex")
    with pytest.raises(ValueError, match="secret"):
        ChannelConfig(secret="ab" * 8)  # too short
    s = new_secret()
    cfg = ChannelConfig(secret=s)
    assert s not in repr(cfg) and "secret" not in repr(cfg)
    rx = create_receiver("t:bind", SPECS, transport="tcp")
    with rx:
        assert rx.config.secret is not None and rx.descriptor.config.secret == rx.config.secret
        assert s not in repr(rx.descriptor)
        assert rx._listener.getsockname()[0] == "127.0.0.1"  # no Ray here: loopback, never 0.0.0.0
    rx = create_receiver("t:bind", SPECS, transport="tcp", secret=s)
    with rx:
        assert rx.descriptor.config.secret == s
