"""Channel hop latency, idle CPU and plain-Ray baselines: ``python benchmarks/channel_hops.py``.

Measures, on this machine, in one run (~1 minute):
  * one-way hop = median of RTT/2 of a symmetric ping-pong between two Ray actors (separate processes):
    small message (one 1 KiB tensor + metadata) and the ResNetLif50 membrane state (50 tensors,
    12.55 MB, the real specs from ``bidl_models``), for the ``shm`` and ``tcp`` transports;
    ``send`` = one copy_ per tensor into the slot (what a cell calling ``send`` pays), ``reserve`` =
    producer wrote in place (``reserve``/``commit``: signalling only);
  * the same ping-pongs as plain Ray actor calls (``ray.get(peer.echo.remote(payload))``), RTT/2, and a
    Ray call carrying the 12.55 MB state with a ``None`` reply;
  * in-process copy of the 12.55 MB state (the memcpy floor);
  * idle CPU of a receiver blocked in ``recv`` and of a sender blocked waiting for a credit (process and
    thread CPU time from /proc over a few seconds), in Ray actors and in a plain spawn process;
  * the signalling primitive alone between two spawn processes: Unix SEQPACKET (used), Unix STREAM, FIFO pair.
Writes ``benchmarks/results/channel_hops.json`` and prints a table.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import socket
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from bidl_models.specs import TensorSpec  # noqa: E402

SMALL = [TensorSpec("x", (256,), "float32")]  # 1 KiB
TARGETS_MS = {"small_hop": 0.3, "state_hop": 2.0}
IDLE_TARGET = 0.02  # fraction of one core


def membrane_specs() -> list[TensorSpec]:
    """The ResNetLif50 (2x128x128, batch 1) membrane state: 50 tensors, 12.55 MB."""
    from bidl_models import build_backbone
    net = build_backbone(dict(type="ResNetLifItout", depth=50, nclass=10, input_channels=2, timestep=10))
    return list(net.segment(0, net.n_blocks).specs(batch=1, model_in_shape=(2, 128, 128)).state)


def summarize(xs: list[float], scale: float = 1e3) -> dict[str, float]:
    """Median / p10 / p90 / mean in ms (input seconds)."""
    s = sorted(xs)
    q = lambda p: s[min(len(s) - 1, int(p * len(s)))] * scale  # noqa: E731
    return {"median_ms": statistics.median(s) * scale, "p10_ms": q(0.10), "p90_ms": q(0.90),
            "mean_ms": statistics.fmean(s) * scale, "n": len(s)}


def cpu_times(pid: int, tid: int | None = None) -> float:
    """utime+stime in seconds of a process (or one of its threads) from /proc."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_payload(specs: list[TensorSpec]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {s.name: torch.rand(s.shape, generator=g) for s in specs}


# ------------------------------------------------------------------ the actor used on both ends

class Peer:
    """One process of a ping-pong pair; holds channel ends by key."""

    def __init__(self) -> None:
        torch.set_num_threads(1)
        self.rx: dict[str, Any] = {}
        self.tx: dict[str, Any] = {}
        self.payloads: dict[str, dict[str, torch.Tensor]] = {}

    def ids(self) -> tuple[int, int, int]:
        return os.getpid(), threading.get_native_id(), torch.get_num_threads()

    def make_rx(self, key: str, specs: list[dict], cfg: dict):
        from bidl_runtime.channels import ChannelConfig, create_receiver
        self.rx[key] = create_receiver(key, [TensorSpec.from_dict(s) for s in specs], ChannelConfig.from_dict(cfg))
        self.payloads[key] = make_payload([TensorSpec.from_dict(s) for s in specs])
        return self.rx[key].descriptor

    def attach(self, key: str, desc) -> None:
        from bidl_runtime.channels import attach_sender
        self.tx[key] = attach_sender(desc)

    def pingpong(self, tx_key: str, rx_key: str, n: int, warmup: int, mode: str, initiator: bool) -> list[float]:
        """Initiator: send, wait for the echo, record RTT. Echoer: recv, send back (copy or in place)."""
        tx, rx, payload = self.tx[tx_key], self.rx[rx_key], self.payloads[rx_key]
        rtts = []
        for i in range(n + warmup):
            if initiator:
                t0 = time.perf_counter()
                if mode == "send":
                    tx.send(payload, {"sample": i, "slice": 0})
                else:
                    tx.reserve()
                    tx.commit({"sample": i, "slice": 0})
                rx.recv().release()
                if i >= warmup:
                    rtts.append(time.perf_counter() - t0)
            else:
                msg = rx.recv()
                if mode == "send":
                    tx.send(msg.tensors, msg.meta)
                else:
                    tx.reserve()
                    tx.commit(msg.meta)
                msg.release()
        return rtts

    def stats(self, key: str) -> dict:
        out = {}
        if key in self.tx:
            out["sender"] = self.tx[key].stats.snapshot()
        if key in self.rx:
            out["receiver"] = self.rx[key].stats.snapshot()
        return out

    def close(self, key: str) -> None:
        for d in (self.tx, self.rx):
            if key in d:
                d.pop(key).close()

    def block_recv(self, key: str, seconds: float) -> float:
        from bidl_runtime.channels import ChannelTimeout
        t0 = time.monotonic()
        try:
            self.rx[key].recv(timeout=seconds).release()
        except ChannelTimeout:
            pass
        return time.monotonic() - t0

    def block_send(self, key: str, seconds: float) -> float:
        from bidl_runtime.channels import ChannelTimeout
        tx = self.tx[key]
        while tx.credits:
            tx.reserve()
            tx.commit({"sample": -1})
        t0 = time.monotonic()
        try:
            tx.reserve(timeout=seconds)
            tx.abort()
        except ChannelTimeout:
            pass
        return time.monotonic() - t0

    # plain Ray baselines
    def echo(self, x):
        return x

    def take(self, x) -> None:
        return None

    def ray_pingpong(self, other, kind: str, n: int, warmup: int, reply: bool = True) -> list[float]:
        import ray
        payload = make_payload(SMALL)["x"] if kind == "small" else make_payload(membrane_specs())
        rtts = []
        for i in range(n + warmup):
            t0 = time.perf_counter()
            ray.get(other.echo.remote(payload) if reply else other.take.remote(payload))
            if i >= warmup:
                rtts.append(time.perf_counter() - t0)
        return rtts


# ------------------------------------------------------------------ spawn child: signalling primitives

def _sig_child(name: str, fifo_dir: str, n: int, desc, ready) -> None:
    """Echo side of the primitive ping-pongs, then a receiver-less idle phase: block in recv."""
    for kind in ("seqpacket", "stream"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET if kind == "seqpacket" else socket.SOCK_STREAM)
        s.connect("\0" + name + kind)
        for _ in range(n):
            s.send(s.recv(256))
        s.close()
    r = os.open(os.path.join(fifo_dir, "ping"), os.O_RDONLY)
    w = os.open(os.path.join(fifo_dir, "pong"), os.O_WRONLY)
    for _ in range(n):
        os.write(w, os.read(r, 256))
    os.close(r)
    os.close(w)
    from bidl_runtime.channels import ChannelTimeout, create_receiver
    rx = create_receiver("idle:child", SMALL)
    ready.send((rx.descriptor, threading.get_native_id()))
    try:
        rx.recv(timeout=desc)  # desc is the idle time here
    except ChannelTimeout:
        pass
    rx.close()


def signalling_and_plain_idle(n: int, idle_s: float) -> dict:
    ctx = mp.get_context("spawn")
    name = f"bidl-bench.{os.getpid()}."
    listeners = {}
    for kind in ("seqpacket", "stream"):
        ls = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET if kind == "seqpacket" else socket.SOCK_STREAM)
        ls.bind("\0" + name + kind)
        ls.listen(1)
        listeners[kind] = ls
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as d:
        os.mkfifo(os.path.join(d, "ping"))
        os.mkfifo(os.path.join(d, "pong"))
        here, there = ctx.Pipe()
        p = ctx.Process(target=_sig_child, args=(name, d, n, idle_s, there))
        p.start()
        msg = b"x" * 64  # about the size of a sent event
        for kind, ls in listeners.items():
            c, _ = ls.accept()
            ls.close()
            rtts = []
            for _ in range(n):
                t0 = time.perf_counter()
                c.send(msg)
                got = c.recv(256)
                rtts.append(time.perf_counter() - t0)
                assert got == msg
            c.close()
            out[f"unix_{kind}"] = summarize([r / 2 for r in rtts[n // 10:]])
        w = os.open(os.path.join(d, "ping"), os.O_WRONLY)
        r = os.open(os.path.join(d, "pong"), os.O_RDONLY)
        rtts = []
        for _ in range(n):
            t0 = time.perf_counter()
            os.write(w, msg)
            os.read(r, 256)
            rtts.append(time.perf_counter() - t0)
        os.close(w)
        os.close(r)
        out["fifo_pair"] = summarize([x / 2 for x in rtts[n // 10:]])
        desc, tid = here.recv()
        from bidl_runtime.channels import attach_sender
        tx = attach_sender(desc)  # connected but idle: the child blocks in recv
        time.sleep(0.2)
        c0, t0c, w0 = cpu_times(p.pid), cpu_times(p.pid, tid), time.monotonic()
        time.sleep(idle_s - 1.0)
        c1, t1c, w1 = cpu_times(p.pid), cpu_times(p.pid, tid), time.monotonic()
        out["idle_plain_receiver"] = {"process_core_frac": (c1 - c0) / (w1 - w0),
                                      "thread_core_frac": (t1c - t0c) / (w1 - w0), "window_s": w1 - w0}
        p.join(idle_s + 10)
        tx.close()
    return out


# ------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "channel_hops.json"))
    ap.add_argument("--small-iters", type=int, default=2000)
    ap.add_argument("--state-iters", type=int, default=200)
    ap.add_argument("--ray-small-iters", type=int, default=300)
    ap.add_argument("--ray-state-iters", type=int, default=20)
    ap.add_argument("--idle-s", type=float, default=3.0)
    args = ap.parse_args(argv)
    t_start = time.monotonic()

    import ray
    from bidl_runtime.channels import ChannelConfig

    state_specs = membrane_specs()
    state_bytes = sum(s.nbytes for s in state_specs)
    res: dict[str, Any] = {}

    # memcpy floor, in this process
    torch.set_num_threads(1)
    src = make_payload(state_specs)
    dst = {k: torch.empty_like(v) for k, v in src.items()}
    flat_s, flat_d = torch.rand(state_bytes // 4), torch.empty(state_bytes // 4)
    per, flat = [], []
    for i in range(60):
        t0 = time.perf_counter()
        for k in src:
            dst[k].copy_(src[k])
        per.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        flat_d.copy_(flat_s)
        flat.append(time.perf_counter() - t0)
    res["copy_state_in_process_50_tensors"] = summarize(per[10:])
    res["copy_state_in_process_flat"] = summarize(flat[10:])

    print("signalling primitives + plain-process idle ...", flush=True)
    prim = signalling_and_plain_idle(max(200, args.small_iters), args.idle_s)

    print("starting Ray ...", flush=True)
    from bidl_runtime.cluster.ray_cluster import start_local
    start_local(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        P = ray.remote(num_cpus=0)(Peer)
        a, b = P.remote(), P.remote()
        (pa, ta, tha), (pb, tb, thb) = ray.get([a.ids.remote(), b.ids.remote()])

        def channel_pair(key: str, specs: list[TensorSpec], cfg: ChannelConfig) -> None:
            sd = [s.to_dict() for s in specs]
            d_ab = ray.get(b.make_rx.remote(key + ":a->b", sd, cfg.to_dict()))
            d_ba = ray.get(a.make_rx.remote(key + ":b->a", sd, cfg.to_dict()))
            ray.get([a.attach.remote(key + ":a->b", d_ab), b.attach.remote(key + ":b->a", d_ba)])

        def run_pp(key: str, n: int, warmup: int, mode: str) -> dict:
            fa = a.pingpong.remote(key + ":a->b", key + ":b->a", n, warmup, mode, True)
            fb = b.pingpong.remote(key + ":b->a", key + ":a->b", n, warmup, mode, False)
            rtts, _ = ray.get([fa, fb])
            st = ray.get(b.stats.remote(key + ":a->b"))
            ray.get([a.close.remote(key + ":a->b"), a.close.remote(key + ":b->a"),
                     b.close.remote(key + ":a->b"), b.close.remote(key + ":b->a")])
            out = summarize([r / 2 for r in rtts])
            out["receiver_stats"] = st["receiver"]
            return out

        cases = [("shm_small", "shm", SMALL, "send", args.small_iters),
                 ("shm_state_send", "shm", state_specs, "send", args.state_iters),
                 ("shm_state_reserve_commit", "shm", state_specs, "reserve", args.state_iters),
                 ("tcp_small", "tcp", SMALL, "send", args.small_iters // 2),
                 ("tcp_state_send", "tcp", state_specs, "send", max(20, args.state_iters // 4))]
        for key, transport, specs, mode, n in cases:
            print(f"channel {key} ...", flush=True)
            channel_pair(key, specs, ChannelConfig(transport=transport, depth=2, recv_timeout_s=60, send_timeout_s=60))
            res[key] = run_pp(key, n, max(5, n // 10), mode)

        print("plain Ray actor calls ...", flush=True)
        res["ray_small_echo"] = summarize([r / 2 for r in ray.get(
            a.ray_pingpong.remote(b, "small", args.ray_small_iters, 20))])
        res["ray_state_echo"] = summarize([r / 2 for r in ray.get(
            a.ray_pingpong.remote(b, "state", args.ray_state_iters, 3))])
        res["ray_state_call_none_reply"] = summarize(ray.get(
            a.ray_pingpong.remote(b, "state", args.ray_state_iters, 3, False)))

        print("idle CPU (Ray actors) ...", flush=True)
        # channel idle:r (a -> b): b blocks in recv; channel idle:s (b -> a, depth 2) : b blocks on credits
        channel_pair("idle", state_specs, ChannelConfig(depth=2))
        c_b0 = cpu_times(pb)
        time.sleep(args.idle_s - 1.0)
        base = (cpu_times(pb) - c_b0) / (args.idle_s - 1.0)
        f_recv = b.block_recv.remote("idle:a->b", args.idle_s)
        time.sleep(0.3)
        c0, t0c, w0 = cpu_times(pb), cpu_times(pb, tb), time.monotonic()
        time.sleep(args.idle_s - 1.0)
        c1, t1c, w1 = cpu_times(pb), cpu_times(pb, tb), time.monotonic()
        ray.get(f_recv)
        res["idle_ray_receiver"] = {"process_core_frac": (c1 - c0) / (w1 - w0),
                                    "thread_core_frac": (t1c - t0c) / (w1 - w0),
                                    "same_actor_idle_no_channel_core_frac": base, "window_s": w1 - w0}
        f_send = b.block_send.remote("idle:b->a", args.idle_s)
        time.sleep(0.3)
        c0, t0c, w0 = cpu_times(pb), cpu_times(pb, tb), time.monotonic()
        time.sleep(args.idle_s - 1.0)
        c1, t1c, w1 = cpu_times(pb), cpu_times(pb, tb), time.monotonic()
        ray.get(f_send)
        res["idle_ray_sender_blocked_on_credit"] = {"process_core_frac": (c1 - c0) / (w1 - w0),
                                                    "thread_core_frac": (t1c - t0c) / (w1 - w0), "window_s": w1 - w0}
        ray.get([a.close.remote("idle:a->b"), a.close.remote("idle:b->a"),
                 b.close.remote("idle:a->b"), b.close.remote("idle:b->a")])
    finally:
        ray.shutdown()

    res["signalling_primitives_one_way"] = {k: v for k, v in prim.items() if not k.startswith("idle")}
    res["idle_plain_receiver"] = prim["idle_plain_receiver"]
    checks = {
        "small_hop_ms": {"target": TARGETS_MS["small_hop"], "measured": res["shm_small"]["median_ms"],
                         "ray_baseline": res["ray_small_echo"]["median_ms"]},
        "state_hop_ms": {"target": TARGETS_MS["state_hop"], "measured": res["shm_state_send"]["median_ms"],
                         "ray_baseline": res["ray_state_echo"]["median_ms"]},
        "idle_receiver_core_frac": {"target": IDLE_TARGET, "measured": res["idle_ray_receiver"]["process_core_frac"]},
        "idle_sender_core_frac": {"target": IDLE_TARGET,
                                  "measured": res["idle_ray_sender_blocked_on_credit"]["process_core_frac"]},
    }
    for c in checks.values():
        c["met"] = c["measured"] <= c["target"]
    doc = {
        "benchmark": "channel_hops", "unix_time": time.time(), "wall_s": time.monotonic() - t_start,
        "machine": {"cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg(), "python": platform.python_version(),
                    "torch": torch.__version__, "ray": ray.__version__, "torch_threads_in_actors": [tha, thb]},
        "definitions": {
            "hop": "median over iterations of RTT/2 of a symmetric ping-pong between two Ray actors (processes)",
            "small": "one float32 tensor [256] (1 KiB) + msgpack metadata",
            "state": f"ResNetLif50 2x128x128 membrane state, {len(state_specs)} tensors, {state_bytes} B",
            "send": "Sender.send: one torch copy_ per tensor into the shared slot, then the sent event",
            "reserve_commit": "producer wrote into the slot in place: signalling + views only",
            "ray_*_echo": "ray.get(peer.echo.remote(payload)) from one actor to the other, RTT/2",
            "ray_state_call_none_reply": "ray.get(peer.take.remote(state)) (12.55 MB in, None out), full call",
            "idle": "CPU time (utime+stime from /proc) of the blocked process / thread over the window, per wall second",
        },
        "checks": checks, "results": res,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)

    print(f"\nchannel hops on {os.cpu_count()} CPUs (one-way = RTT/2, median [p10-p90] ms)")
    rows = [("in-process copy_ of the state (50 tensors)", "copy_state_in_process_50_tensors"),
            ("in-process copy_ of the state (flat)", "copy_state_in_process_flat"),
            ("shm small (1 KiB)", "shm_small"), ("shm state 12.55 MB, send (1 copy)", "shm_state_send"),
            ("shm state 12.55 MB, reserve/commit", "shm_state_reserve_commit"),
            ("tcp small (1 KiB)", "tcp_small"), ("tcp state 12.55 MB", "tcp_state_send"),
            ("Ray actor call small, RTT/2", "ray_small_echo"), ("Ray actor call state echo, RTT/2", "ray_state_echo"),
            ("Ray actor call state in, None out", "ray_state_call_none_reply")]
    for label, k in rows:
        r = res[k]
        print(f"  {label:42s} {r['median_ms']:9.3f}  [{r['p10_ms']:.3f}-{r['p90_ms']:.3f}]  n={r['n']}")
    for k, r in res["signalling_primitives_one_way"].items():
        print(f"  signal only, {k:29s} {r['median_ms']:9.3f}  [{r['p10_ms']:.3f}-{r['p90_ms']:.3f}]  n={r['n']}")
    for k in ("idle_ray_receiver", "idle_ray_sender_blocked_on_credit", "idle_plain_receiver"):
        r = res[k]
        extra = (f", same actor idle without channel {r['same_actor_idle_no_channel_core_frac'] * 100:.2f}%"
                 if "same_actor_idle_no_channel_core_frac" in r else "")
        print(f"  {k:42s} process {r['process_core_frac'] * 100:.2f}% of a core, blocked thread "
              f"{r['thread_core_frac'] * 100:.2f}%{extra}")
    print("\ntargets:")
    for k, c in checks.items():
        base = f" (plain Ray: {c['ray_baseline']:.3f})" if "ray_baseline" in c else ""
        print(f"  {k:26s} target <= {c['target']:<6g} measured {c['measured']:.4f}{base}  "
              f"{'MET' if c['met'] else 'MISSED'}")
    print(f"\nwrote {args.out} in {time.monotonic() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
