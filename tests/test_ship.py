"""Artifact shipping without Ray: the content-addressed store and the hash check on arrival."""
import pytest

from bidl_runtime.cluster.ship import STORE_ENV, Package, ShipError, present, store_root, unpack


def artifact(d):
    d.mkdir()
    (d / "net_params.json").write_text('{"kind": "x"}')
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
