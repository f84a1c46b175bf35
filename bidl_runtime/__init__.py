"""The spatio-temporal device grid.

The stage chain: ``GridLayout`` (``layout``) + ``ModelSpec`` (``bidl_models.model_spec``) ->
artifacts (``compile.compile_spec`` or ``emulated.emulate``) -> ``place`` (``place``: nodes,
transports, artifact shipping) -> ``GridPlan`` (``plan``: cells and edges) -> ``Grid(plan).run``
(``grid``, cells in ``cell``, channels in ``channels``) -> ``RunReport`` (``report``). Tunables:
``config.RuntimeConfig``; library entry: ``api``; CLI: ``python -m bidl_runtime.run``.
"""
from bidl_grid.versions import check_ray as _check_ray

_check_ray()   # one-line ImportError on a Ray older than bidl-grid supports (read from metadata: Ray is not imported)
