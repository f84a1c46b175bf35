"""Artifact shipping without Ray: the content-addressed store, the hash check on arrival, and the
receiving host's own seal."""
import json

import pytest

from bidl_runtime.cluster.ship import STORE_ENV, Package, ShipError, present, store_root, unpack
from compile.seal import KEY_ENV, check_seal, seal_manifest

DRIVER_KEY, NODE_KEY = "11" * 32, "22" * 32


def artifact(d, doc=None):
    d.mkdir()
    (d / "net_params.json").write_text(json.dumps(seal_manifest(doc or {"kind": "x"}), indent=2))
    (d / "program.pt2").write_bytes(bytes(range(256)) * 10)
    return d


def test_unpack_checks_every_file_and_is_content_addressed(tmp_path):
    pkg = Package.of(artifact(tmp_path / "a"))
    assert [n for n, _ in pkg.files] == ["net_params.json", "program.pt2"]
    store = tmp_path / "store"
    data = pkg.read()
    damaged = dict(data, **{"program.pt2": data["program.pt2"][:-1] + b"\x00"})
    with pytest.raises(ShipError, match=r"program.pt2 of artifact .* arrived .* with sha256 .* expected .*refusing"):
        unpack(store, pkg, damaged)
    assert present(store, pkg) is None and not any(store.glob(f"{pkg.digest}*"))
    with pytest.raises(ShipError, match="net_params.json .* missing"):
        unpack(store, pkg, {"program.pt2": data["program.pt2"]})
    d = unpack(store, pkg, data)
    assert d == store / pkg.digest and present(store, pkg) == d
    (d / "program.pt2").write_bytes(b"changed")
    assert present(store, pkg) is None                      # a changed copy is not "present"


def test_store_root_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(STORE_ENV, str(tmp_path / "s"))
    assert store_root() == tmp_path / "s"
    monkeypatch.delenv(STORE_ENV)
    assert store_root().parts[-3:] == (".cache", "bidl-grid", "artifacts")


def test_not_an_artifact(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(ShipError, match="not an artifact directory"):
        Package.of(tmp_path / "x")


def test_a_shipped_copy_is_resealed_with_the_receiving_hosts_key(tmp_path, monkeypatch):
    """Each host has its own artifact key: the driver checks its seal before shipping, the node checks
    every sha256 and seals its copy with its own key (no key is handed over)."""
    monkeypatch.setenv(KEY_ENV, DRIVER_KEY)
    pkg = Package.of(artifact(tmp_path / "a", {"kind": "x", "chunk_len": 4}))
    data = pkg.read()
    monkeypatch.setenv(KEY_ENV, NODE_KEY)                       # now on the receiving host
    store = tmp_path / "store"
    d = unpack(store, pkg, data)
    doc = json.loads((d / "net_params.json").read_text())
    check_seal(d / "net_params.json", doc)                      # verifies with the node's key
    assert doc["chunk_len"] == 4 and present(store, pkg) == d    # same body: present, nothing to send again
    monkeypatch.setenv(KEY_ENV, DRIVER_KEY)
    assert present(store, pkg) is None                           # not sealed by this key: not trusted
    monkeypatch.setenv(KEY_ENV, NODE_KEY)
    forged = dict(doc, chunk_len=5)                              # a different body, even resealed, is not it
    (d / "net_params.json").write_text(json.dumps(seal_manifest(forged)))
    assert present(store, pkg) is None


def test_the_driver_refuses_to_ship_what_its_key_did_not_seal(tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, NODE_KEY)
    d = artifact(tmp_path / "a")
    monkeypatch.setenv(KEY_ENV, DRIVER_KEY)
    with pytest.raises(ShipError, match=r"refusing to ship .*sealed with another artifact key"):
        Package.of(d)
