"""The grid plan, pure data (no torch, no Ray): cells and edges (:mod:`.grid_plan`), and placing a
program set on devices (:mod:`.place`). The emulated program set (:mod:`.emulated`) is imported on
its own (it resolves a model). ``python -m bidl_runtime.plan`` prints a plan."""
from .grid_plan import EDGE_KINDS, CellKey, CellPlan, Edge, GridPlan, cell_name
from .place import Cluster, edge_transport, place, rebind_driver

__all__ = ["EDGE_KINDS", "CellKey", "CellPlan", "Cluster", "Edge", "GridPlan", "cell_name", "edge_transport",
           "place", "rebind_driver"]
