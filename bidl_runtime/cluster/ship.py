"""Shipping compiled artifacts to the nodes that run them, through Ray, checked by hash on arrival.

A node keeps a content-addressed store: ``<store>/<digest>/`` holds one artifact directory, where
``digest`` is the sha256 of the driver's manifest (which records the sha256 of every program file). The
store is ``$BIDL_ARTIFACT_STORE`` on that node, else ``~/.cache/bidl-grid/artifacts``: never the
driver's working directory, so nodes need no shared file system. The driver sends each node one
request listing the artifacts its cells need, with object refs to the bytes; the node fetches
only what its store lacks, checks every file's sha256 against what the driver read, writes into
a temporary directory and renames it into place.

Seals across hosts: every host has its own artifact key (:mod:`compile.seal`), so a manifest sealed
on the driver's host does not verify on another. The receiving node **reseals its copy with its own
key** instead of sharing the key, because

- the chain of trust is unbroken without it: the driver checks its artifact's seal with its key
  before shipping (:meth:`Package.of`), the file list with every sha256 travels over Ray's
  authenticated control plane, and the node refuses any file whose bytes differ from that list; the
  node then vouches, with its key, for exactly the bytes the driver vouched for;
- no key leaves the host it was made on: a host that is compromised (or merely lost and returned)
  learns nothing that lets it forge artifacts another host will load, and an operator hands over the
  Ray token only, not a second secret;
- the cells still check a seal before they load anything (their node's), so a copy altered in that
  node's store after it arrived is refused there, as on the driver's host.

A stored copy is "present" only if its program files hash to the driver's sha256 and its manifest has
the driver's body (:func:`compile.seal.body_sha256`) under a seal that verifies with the node's key.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Mapping, Optional

from bidl_models.checkpoint import file_sha256
from compile.errors import ArtifactError
from compile.manifest import MANIFEST
from compile.seal import body_sha256, check_seal, seal_manifest

from bidl_runtime.errors import ShipError
from bidl_runtime.plan.grid_plan import CellKey, GridPlan

STORE_ENV = "BIDL_ARTIFACT_STORE"


def store_root() -> Path:
    """This node's artifact store."""
    env = os.environ.get(STORE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "bidl-grid" / "artifacts"


@dataclass(frozen=True)
class Package:
    """One artifact directory to ship: its files' sha256, its digest (the driver's manifest's sha256)
    and ``body``, the sha256 of the manifest's sealed body (:func:`compile.seal.body_sha256`)."""

    source: str                         # the directory on the driver's node
    files: tuple[tuple[str, str], ...]  # (file name, sha256)
    digest: str
    body: str = ""

    @classmethod
    def of(cls, directory: str | Path) -> "Package":
        """The package of an artifact directory on this (the driver's) host, after checking its seal
        with this host's key: nothing unsealed or altered is shipped (ShipError naming it)."""
        d = Path(directory).resolve()
        files = tuple(sorted((p.name, file_sha256(p)) for p in d.iterdir() if p.is_file()))
        digest = dict(files).get(MANIFEST)
        if digest is None:
            raise ShipError(f"{d}: not an artifact directory (no {MANIFEST})")
        doc = _document(d / MANIFEST)
        try:
            check_seal(d / MANIFEST, doc)
        except ArtifactError as e:
            raise ShipError(f"refusing to ship {d}: {e}") from None
        return cls(str(d), files, digest, body_sha256(doc))

    def read(self) -> dict[str, bytes]:
        return {name: (Path(self.source) / name).read_bytes() for name, _ in self.files}


def _document(path: Path) -> dict:
    """A manifest's JSON document (ShipError naming it if unreadable)."""
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise ShipError(f"{path}: unreadable manifest ({e})") from None
    if not isinstance(doc, dict):
        raise ShipError(f"{path}: the manifest is not a JSON object")
    return doc


def _sealed_here(path: Path, pkg: Package) -> bool:
    """Whether the stored manifest has the driver's body under a seal of this node's key."""
    try:
        doc = json.loads(path.read_bytes())
        if not isinstance(doc, dict) or body_sha256(doc) != pkg.body:
            return False
        check_seal(path, doc)
        return True
    except (OSError, ValueError, ArtifactError):
        return False


def present(root: Path, pkg: Package) -> Optional[Path]:
    """The store's copy of ``pkg`` if it is there and intact (its manifest resealed on this node),
    else None."""
    d = root / pkg.digest
    if not d.is_dir():
        return None
    for name, sha in pkg.files:
        f = d / name
        if not f.is_file():
            return None
        if not (_sealed_here(f, pkg) if name == MANIFEST else file_sha256(f) == sha):
            return None
    return d


def unpack(root: Path, pkg: Package, data: Mapping[str, bytes]) -> Path:
    """Write ``data`` (file name -> bytes) as ``pkg`` into the store at ``root``, refusing any file
    whose bytes do not hash to the sha256 the driver read; the manifest is written resealed with this
    node's key (see the module doc)."""
    for name, sha in pkg.files:
        got = hashlib.sha256(data.get(name, b"")).hexdigest() if name in data else None
        if got != sha:
            raise ShipError(f"{name} of artifact {pkg.source} arrived at {root} "
                            f"{'missing' if got is None else f'with sha256 {got[:16]}...'}; expected {sha[:16]}... "
                            "(it was changed or damaged in transit): refusing it")
    root.mkdir(parents=True, exist_ok=True)
    final = root / pkg.digest
    tmp = root / f".{pkg.digest}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        for name, _ in pkg.files:
            (tmp / name).write_bytes(data[name])
        doc = _document(tmp / MANIFEST)
        if body_sha256(doc) != pkg.body:
            raise ShipError(f"{MANIFEST} of artifact {pkg.source}: its body differs from what the driver checked")
        (tmp / MANIFEST).write_text(json.dumps(seal_manifest(doc), indent=2) + "\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return final


def inventory(packages: list[Package]) -> dict[str, str]:
    """Runs on the target node: ``{digest: path}`` of the packages its store already holds intact."""
    root = store_root()
    out = {}
    for pkg in packages:
        d = present(root, pkg)
        if d is not None:
            out[pkg.digest] = str(d)
    return out


def receive(requests: list[tuple[Package, list]]) -> dict[str, str]:
    """Runs on the target node: store every (package, [object ref of its bytes]); ``{digest: path}``."""
    import ray
    root = store_root()
    return {pkg.digest: str(unpack(root, pkg, ray.get(ref[0]))) for pkg, ref in requests}


def ship(packages: list[Package], node: str, timeout_s: float = 600.0) -> tuple[dict[str, str], list[str]]:
    """Make ``packages`` present on ``node`` (one Ray task asks what its store holds, a second brings
    the rest). Returns ``({digest: path on that node}, [digests whose bytes were sent])``."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    opts = dict(num_cpus=0, max_retries=0, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
    paths = ray.get(ray.remote(inventory).options(**opts).remote(packages), timeout=timeout_s)
    missing = [pkg for pkg in packages if pkg.digest not in paths]
    if missing:
        # refs nested in a list are not resolved by Ray before the call: the node fetches them itself
        requests = [(pkg, [ray.put(pkg.read())]) for pkg in missing]
        paths.update(ray.get(ray.remote(receive).options(**opts).remote(requests), timeout=timeout_s))
    return paths, [pkg.digest for pkg in missing]


def ship_programs(plan: GridPlan, only: Optional[Iterable[CellKey]] = None) -> GridPlan:
    """The plan with every compiled program of a cell on another node than the driver's shipped to
    that node (once per node and program) and the cell pointed at its copy there (the driver's
    directory kept as the program's ``origin``). ``only``: just these cells (cells moved after a host
    was lost). Emulated programs (no files) and cells on the driver's node are left as they are; a
    cell whose program was shipped before is shipped from its origin."""
    keys = None if only is None else set(only)
    need: dict[str, dict[str, Package]] = {}
    for c in plan.cells:
        if (keys is None or c.key in keys) and c.node not in (plan.driver_node, "local") and not c.program.emulated:
            src = c.program.origin or c.program.path
            need.setdefault(c.node, {}).setdefault(src, Package.of(src))
    if not need:
        return plan
    moved: dict[tuple[str, str], str] = {}
    for node, pkgs in need.items():
        paths, _ = ship(list(pkgs.values()), node)
        for path, pkg in pkgs.items():
            moved[(node, path)] = paths[pkg.digest]

    def shipped(c):
        src = c.program.origin or c.program.path
        if (keys is not None and c.key not in keys) or (c.node, src) not in moved:
            return c
        return replace(c, program=replace(c.program, path=moved[(c.node, src)], origin=src))
    return replace(plan, cells=tuple(shipped(c) for c in plan.cells))
