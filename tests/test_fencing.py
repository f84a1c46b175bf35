"""Grid epochs on the channels (no Ray): a sender of another epoch (a cell fenced off with a lost host)
never gets a connection, and messages of an older epoch never reach the receiver's user; both are
counted."""
from __future__ import annotations

import threading

import pytest
import torch

from bidl_models.specs import TensorSpec
from bidl_runtime.channels import ChannelError, ChannelTimeout, attach_sender, create_receiver

SPECS = [TensorSpec("x", (2, 3), "float32")]


def tensors(i: int) -> dict:
    return {"x": torch.full((2, 3), float(i))}


def test_a_sender_of_another_epoch_is_refused_and_counted():
    """tcp, the transport between hosts (an shm receiver's slots go to the first sender that maps them)."""
    rx = create_receiver("fence:hello", SPECS, transport="tcp", epoch=2, hello_timeout_s=5)
    desc = rx.descriptor
    failed: list[BaseException] = []

    def stale() -> None:   # the old wiring's cell, back from a partition: its hello carries epoch 1
        try:
            tx = attach_sender(desc, epoch=1, connect_timeout_s=1.0)
            for i in range(4):   # the first ones may leave before the receiver drops it: never delivered
                tx.send(tensors(99), {"sample": 99 + i}, timeout=3)
        except (ChannelError, OSError) as e:
            failed.append(e)
    t = threading.Thread(target=stale)
    t.start()
    try:
        got = []
        for _ in range(20):   # the receiver handles the stale hellos while it waits for its sender
            try:
                with rx.recv(timeout=0.1) as msg:
                    got.append(msg.meta["sample"])
            except ChannelTimeout:
                if rx.stats.fenced:
                    break
        assert rx.stats.fenced >= 1 and not got and "fenced" in rx.stats.last_rejected
        tx = attach_sender(desc, epoch=2)                       # the rewired grid's sender
        tx.send(tensors(1), {"sample": 1}, timeout=5)
        with rx.recv(timeout=5) as msg:
            assert msg.meta["sample"] == 1 and float(msg.tensors["x"][0, 0]) == 1.0
        tx.close()
    finally:
        t.join(timeout=30)
        rx.close()
    assert failed, "the stale sender's sends went on after its hello was refused"


@pytest.mark.parametrize("transport", ["shm", "tcp"])
def test_messages_of_an_older_epoch_are_dropped_after_fence(transport):
    rx = create_receiver("fence:msgs", SPECS, transport=transport, depth=2)
    tx = attach_sender(rx.descriptor)
    try:
        tx.send(tensors(0), {"sample": 0}, timeout=5)
        with rx.recv(timeout=5) as msg:
            assert msg.meta["sample"] == 0
        rx.fence(1)                                  # the grid moved on: this sender's epoch (0) is stale
        done = threading.Event()

        def drain() -> None:   # the receiver reads (and drops) while the stale sender writes
            while not done.is_set():
                try:
                    rx.recv(timeout=0.1).release()
                    raise AssertionError("a stale message was handed out")
                except ChannelTimeout:
                    pass
        reader = threading.Thread(target=drain)
        reader.start()
        for i in range(1, 6):                        # more than the depth: the credits come back
            tx.send(tensors(i), {"sample": i}, timeout=5)
        tx.send_control("stop", timeout=5)
        for _ in range(50):
            if rx.stats.fenced == 6:
                break
            threading.Event().wait(0.05)
        done.set()
        reader.join(timeout=10)
        assert rx.stats.fenced == 6 and rx.stats.messages == 1 and rx.stats.snapshot()["fenced"] == 6
        with pytest.raises(ValueError, match="fence"):
            rx.fence(0)
    finally:
        tx.close()
        rx.close()
