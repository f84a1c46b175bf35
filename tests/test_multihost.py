"""A grid across real hosts (network namespaces with their own addresses, Ray nodes, HOME and
artifact stores; see tests/cluster/testbed.py): it streams bit-exact, and the test bed leaves nothing."""
from __future__ import annotations

import sys

import pytest

from cluster.testbed import TestBed, unavailable

pytestmark = [pytest.mark.slow, pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))]


@pytest.fixture(scope="module")
def bed():
    with TestBed(hosts=2, devices=2, cpus=1) as b:
        yield b
    assert not b.leftovers(), b.leftovers()


def test_a_grid_across_two_hosts_equals_its_reference(bed):
    r = bed.run(1, [sys.executable, "-m", "bidl_runtime.run", "--address", bed.address, "--grid", "2x2",
                    "--samples", "4", "--cfg-options", "model.backbone.timestep=4"], timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert "outputs equal reference: 4/4 samples bit-exact" in out, out[-3000:]

    assert "tcp" in out   # cells on the other host: activations or state cross the link
