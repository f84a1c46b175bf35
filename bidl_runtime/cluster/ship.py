"""Shipping compiled artifacts to the nodes that run them, through Ray, checked by hash on arrival.

A node keeps a content-addressed store: ``<store>/<digest>/`` holds one artifact directory, where
``digest`` is the sha256 of its manifest (which records the sha256 of every program file). The
store is ``$BIDL_ARTIFACT_STORE`` on that node, else ``~/.cache/bidl-grid/artifacts``: never the
driver's working directory, so nodes need no shared file system. The driver sends each node one
request listing the artifacts its cells need, with object refs to the bytes; the node fetches
only what its store lacks, checks every file's sha256 against what the driver read, writes into
a temporary directory and renames it into place.
"""
from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Optional

from bidl_models.checkpoint import file_sha256

from bidl_runtime.errors import ShipError
from bidl_runtime.plan.grid_plan import GridPlan

STORE_ENV = "BIDL_ARTIFACT_STORE"


def store_root() -> Path:
    """This node's artifact store."""
    env = os.environ.get(STORE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "bidl-grid" / "artifacts"


@dataclass(frozen=True)
class Package:
    """One artifact directory to ship: its files' sha256, its digest (the manifest's sha256)."""

    source: str                         # the directory on the driver's node
    files: tuple[tuple[str, str], ...]  # (file name, sha256)
    digest: str

    @classmethod
    def of(cls, directory: str | Path) -> "Package":
        d = Path(directory).resolve()
        files = tuple(sorted((p.name, file_sha256(p)) for p in d.iterdir() if p.is_file()))
        digest = dict(files).get("net_params.json")
        if digest is None:
            raise ShipError(f"{d}: not an artifact directory (no net_params.json)")
        return cls(str(d), files, digest)

    def read(self) -> dict[str, bytes]:
        return {name: (Path(self.source) / name).read_bytes() for name, _ in self.files}


def present(root: Path, pkg: Package) -> Optional[Path]:
    """The store's copy of ``pkg`` if it is there and intact, else None."""
    d = root / pkg.digest
    if not d.is_dir():
        return None
    for name, sha in pkg.files:
        f = d / name
        if not f.is_file() or file_sha256(f) != sha:
            return None
    return d


def unpack(root: Path, pkg: Package, data: Mapping[str, bytes]) -> Path:
    """Write ``data`` (file name -> bytes) as ``pkg`` into the store at ``root``, refusing any file
    whose bytes do not hash to the sha256 the driver read."""
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


def ship_programs(plan: GridPlan) -> GridPlan:
    """The plan with every compiled program of a cell on another node than the driver's shipped to
    that node (once per node and program) and the cell pointed at its copy there. Emulated programs
    (no files) and cells on the driver's node are left as they are."""
    need: dict[str, dict[str, Package]] = {}
    for c in plan.cells:
        if c.node not in (plan.driver_node, "local") and not c.program.emulated:
            need.setdefault(c.node, {}).setdefault(c.program.path, Package.of(c.program.path))
    if not need:
        return plan
    moved: dict[tuple[str, str], str] = {}
    for node, pkgs in need.items():
        paths, _ = ship(list(pkgs.values()), node)
        for path, pkg in pkgs.items():
            moved[(node, path)] = paths[pkg.digest]
    cells = tuple(replace(c, program=replace(c.program, path=moved[(c.node, c.program.path)]))
                  if (c.node, c.program.path) in moved else c for c in plan.cells)
    return replace(plan, cells=cells)
