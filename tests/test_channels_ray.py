"""Channels between two Ray actors (Ray only ships the descriptor; data goes through the channel)."""
from __future__ import annotations

import os

import pytest

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def peers(ray_local):
    """Two actors (separate processes) on the module's cluster, shared by the tests of this module."""
    yield Peer.remote(), Peer.remote()


@ray.remote(num_cpus=0)
class Peer:
    """Holds one channel end; the methods are what a grid cell would do."""

    def __init__(self) -> None:
        self.rx = self.tx = None

    def make_receiver(self, transport: str):
        from bidl_models.specs import TensorSpec
        from bidl_runtime.channels import create_receiver
        self.rx = create_receiver(f"cell[0,0]->cell[1,0]/{transport}",
                                  [TensorSpec("v", (1, 8, 4, 4)), TensorSpec("acc", (1, 10))],
                                  transport=transport, depth=2)
        return self.rx.descriptor

    def attach_and_send(self, desc, n: int) -> int:
        import torch
        from bidl_runtime.channels import attach_sender
        self.tx = attach_sender(desc)
        for i in range(n):
            self.tx.send({"v": torch.full((1, 8, 4, 4), float(i)), "acc": torch.arange(10.0).view(1, 10) * i},
                         {"sample": i, "slice": 1}, timeout=20)
        self.tx.send_control("stop", {"sample": n})
        self.tx.close()
        return os.getpid()

    def receive_all(self) -> dict:
        from bidl_runtime.channels import ChannelClosed
        got = []
        while True:
            try:
                msg = self.rx.recv(timeout=20)
            except ChannelClosed:
                break
            with msg:
                if msg.is_data:
                    got.append((msg.meta["sample"], msg.tensors["v"].sum().item(), msg.tensors["acc"].sum().item()))
                else:
                    got.append((msg.kind, msg.meta["sample"]))
        stats = self.rx.stats.snapshot()
        self.rx.close()
        return {"got": got, "stats": stats, "pid": os.getpid()}


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_channel_between_ray_actors(peers, transport):
    a, b = peers
    desc = ray.get(b.make_receiver.remote(transport))
    result_ref = b.receive_all.remote()
    sender_pid = ray.get(a.attach_and_send.remote(desc, 5))
    res = ray.get(result_ref, timeout=60)
    assert res["pid"] != sender_pid
    assert res["got"] == [(i, 128.0 * i, 45.0 * i) for i in range(5)] + [("stop", 5)]
    assert res["stats"]["messages"] == 5 and res["stats"]["bytes"] == 5 * (128 + 10) * 4


def test_the_embedded_node_runs_only_what_a_grid_uses(peers):
    """start_local without the dashboard starts a lean node (bidl_runtime.cluster.ray_cluster.lean_node):
    the GCS, the raylet and its agents, but no autoscaler monitor, log monitor or API server; actors
    run on it."""
    import psutil
    cmdlines = [" ".join(p.cmdline()) for p in psutil.Process().children(recursive=True) if p.is_running()]
    names = {n for c in cmdlines for n in ("gcs_server", "raylet", "monitor.py", "log_monitor.py", "dashboard.py")
             if f"/{n} " in c + " " or c.startswith(n)}
    assert {"gcs_server", "raylet"} <= names, cmdlines
    assert not names & {"monitor.py", "log_monitor.py", "dashboard.py"}, cmdlines
    assert ray.get([p.__ray_ready__.remote() for p in peers]) == [True, True]
