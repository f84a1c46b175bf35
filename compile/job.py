"""The stage chain up to the artifacts, owned by one object: config -> layout -> model spec -> time
slices -> artifacts, each stage produced once, on first use.

    job = CompileJob(load_config("clif3fc3dm_itout-b16x1-dvsglyphs"), grid="3x2", checkpoint=ckpt)
    job.layout, job.spec, job.slices          # GridLayout 3x2, ModelSpec, [7, 7, 6]
    arts = job.artifacts()                     # compiled (or found in the cache) once
    future = job.start_artifacts()             # ... or in a thread, while something else starts

``bidl-compile`` runs it; the runtime's :class:`bidl_runtime.api.GridJob` extends it with the later
stages (plan, grid, run), so every entry point walks the same chain. The grid is resolved once, here:
``grid`` ('RxC' or (R, C)), else the config's ``lynxi_devices``, else 1 row x the config's segments
(``model_0..n``; one for a whole model, or as many as ``splits`` gives).
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Future
from functools import cached_property
from pathlib import Path
from typing import Any, Optional, Sequence

from bidl_models.config import Config, load_config
from bidl_models.model_spec import ModelSpec
from bidl_models.slicing import GridLayout, config_segments, time_slices

from .build import ArtifactSet, compile_spec
from .options import CompileOptions
from .spec_record import record_path, recorded_spec, write_record


class CompileJob:
    """One model's chain up to its artifacts. ``config``: a loaded config; ``grid``, ``replicas``: the
    layout; ``checkpoint``: weights (None: seeded initial weights, ``seed``); ``splits``, ``in_shape``,
    ``input_dtype``: as :meth:`ModelSpec.from_config` takes them; ``options``: how to compile
    (``options.out`` is the cache root)."""

    def __init__(self, config: Config, *, grid: str | Sequence[int] | None = None, replicas: int = 1,
                 checkpoint: str | Path | None = None, options: Optional[CompileOptions] = None,
                 splits: Optional[Sequence[Sequence[int | str]]] = None, in_shape: Optional[Sequence[int]] = None,
                 input_dtype: Optional[str] = None, seed: int = 0):
        if not isinstance(config, Config):
            raise ValueError(f"config: expected a Config from bidl_models.config.load_config, got {type(config).__name__}")
        self.config = config
        self._grid, self._replicas = grid, replicas   # resolved once, into ``layout``
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.options = options or CompileOptions()
        self.splits, self.in_shape, self.input_dtype, self.seed = splits, in_shape, input_dtype, seed
        self._lock = threading.Lock()
        self._artifacts: Optional[Future] = None
        self.spec_times: Optional[tuple[float, float]] = None   # epoch start and end of the model's resolution
        self.artifacts_done_at: Optional[float] = None   # epoch time the artifact stage finished
        self._spec_done = threading.Event()               # set once the started stage has the spec (or failed)
        self._weight_bytes: Optional[list[int]] = None
        self._spec_recorded = False                        # the spec was read from its record, or written

    # ------------------------------------------------------------------------------ the stages

    @cached_property
    def layout(self) -> GridLayout:
        """Rows (time slices) x columns (segments) x replicas and their device ids."""
        grid = self._grid
        if grid is None and self.splits is not None and self.config.get("lynxi_devices") is None:
            grid = (1, len(self.splits))
        return GridLayout.resolve(self.config, grid, self._replicas)

    @property
    def spec_args(self) -> dict[str, Any]:
        """The arguments of :meth:`ModelSpec.from_config` that resolve this job's model."""
        return dict(columns=self.layout.cols, splits=self.splits, checkpoint=self.checkpoint,
                    in_shape=self.in_shape, input_dtype=self.input_dtype, seed=self.seed)

    @cached_property
    def spec(self) -> ModelSpec:
        """The model, resolved once: segments for the layout's columns, weights loaded. Read back from
        its record in the artifact root when there is one (:mod:`compile.spec_record`; not with
        ``force``): the modules are then built only if something needs them (a compile)."""
        if self.options.force:
            return ModelSpec.from_config(self.config, **self.spec_args)
        spec, self._spec_recorded = recorded_spec(self.options.root, self.config, self.spec_args)
        return spec

    def record_spec(self) -> None:
        """Record the resolved spec in the artifact root, for the next run to read (after the artifacts
        are there; not when it was read from its record; nothing where the root is not writable)."""
        if not self._spec_recorded and self.options.root.is_dir():
            try:
                write_record(record_path(self.options.root, self.config, self.spec_args), self.spec)
            except OSError:   # a cache this user may read but not write: the next run resolves the model
                return
            self._spec_recorded = True

    def check_spec(self, timeout: float) -> None:
        """Where the started artifact stage resolves the model within ``timeout`` seconds (a spec read
        from its record: a tenth of a second), raise its error now (a grid the model cannot take, a
        wrong checkpoint): ``bidl-run`` then fails before Ray starts. Otherwise the error comes out of
        :meth:`wait_spec` later."""
        if self._artifacts is not None and self._spec_done.wait(timeout) and self.spec_times is None:
            self._artifacts.result()

    @cached_property
    def slices(self) -> list[int]:
        """Time steps of every row (``numpy.array_split`` of T), checked against the model's layers."""
        slices = time_slices(self.spec.T, self.layout.rows)
        self.spec.check_slices(slices)
        return slices

    @property
    def artifact_dir(self) -> Path:
        """Where this model's artifacts are cached: ``<out>/<config>-<spec key>``."""
        return self.options.root / f"{self.spec.name}-{self.spec.key}"

    def build(self):
        """The artifact stage itself (a subclass may produce another program set)."""
        return compile_spec(self.spec, self.slices, self.options)

    def start_artifacts(self, nice: int = 0) -> Future:
        """Start the artifact stage in a thread (once), the model's resolution first (``spec_times``
        records it); its future (the model's errors come out of it too). ``nice``: the thread's
        priority below this process's while it works (:meth:`renice` restores it), so that what
        starts meanwhile comes first."""
        with self._lock:
            if self._artifacts is None:
                self._artifacts = Future()
                self._nice = nice
                threading.Thread(target=self._produce, name="bidl-artifacts", daemon=True).start()
            return self._artifacts

    def renice(self) -> None:
        """The artifact thread back to this process's priority (where this user may raise it)."""
        nice, self._nice = getattr(self, "_nice", 0), 0   # a thread not yet started stays as it is
        tid = getattr(self, "_tid", None)
        if tid is not None and nice:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, os.getpid()))
            except OSError:
                pass

    def weight_bytes(self) -> list[int]:
        """Bytes of each segment's weights (parameters and buffers): what every cell of its column holds
        (counted when the model was resolved)."""
        if self._weight_bytes is None:
            self._weight_bytes = list(self.spec.weight_bytes)
        return self._weight_bytes

    def wait_spec(self) -> ModelSpec:
        """The model: from the started artifact stage once it has resolved it (its error if it could
        not), else resolved here."""
        if self._artifacts is not None:
            self._spec_done.wait()
            if self.spec_times is None:   # the model failed: its error, once the stage has handed it over
                self._artifacts.result()
        return self.spec

    def artifacts(self) -> ArtifactSet:
        """The artifacts (built, or reused from the cache), produced once; waits for a started stage."""
        with self._lock:
            if self._artifacts is None:
                self._artifacts = Future()
                run_here = True
            else:
                run_here = False
        if run_here:
            self._produce()
        return self._artifacts.result()

    def _produce(self) -> None:
        fut = self._artifacts
        if not fut.set_running_or_notify_cancel():
            return
        self._tid = threading.get_native_id()
        if getattr(self, "_nice", 0):
            try:   # Linux: a thread's nice value is its own
                os.setpriority(os.PRIO_PROCESS, self._tid, os.getpriority(os.PRIO_PROCESS, os.getpid()) + self._nice)
            except OSError:
                pass
        try:
            t = time.time()
            try:
                _ = self.spec, self.slices, self.weight_bytes()
                self.spec_times = (t, time.time())
            finally:
                self._spec_done.set()
            result = self.build()
            self.record_spec()
        except BaseException as e:  # noqa: BLE001 - handed to whoever waits for the stage
            self.artifacts_done_at = time.time()
            fut.set_exception(e)
        else:
            self.artifacts_done_at = time.time()
            fut.set_result(result)


def compile_config(cfg: Config | str | Path, checkpoint: Optional[str | Path] = None, *,
                   grid: str | Sequence[int] | None = None, rows: Optional[int] = None,
                   splits: Optional[Sequence[Sequence[int | str]]] = None, in_shape: Optional[Sequence[int]] = None,
                   input_dtype: Optional[str] = None, seed: int = 0, overrides: Sequence[str] = (),
                   **options: Any) -> ArtifactSet:
    """Config in, artifacts out, in one call: :class:`CompileJob` from a config (or a name or path,
    loaded with ``overrides``), its artifacts.

    Grid rows come from ``grid`` ('RxC' or (R, C)), else ``rows``, else the config's
    ``lynxi_devices``, else 1; segment columns from the config's ``model_0..n``, else ``splits``,
    else an automatic FLOP-balanced split into the grid's columns. ``in_shape``: per-step model
    input (C, H, W) when neither the backbone nor ``models_compile_inputshape`` fixes it.
    ``options``: :class:`CompileOptions` fields (``out``, ``force``, ``aot``, ``batch``, ``tol``, ...).
    """
    try:
        opts = CompileOptions(**options)
    except TypeError as e:
        raise ValueError(f"compile_config: {e}; options are the CompileOptions fields "
                         f"{sorted(CompileOptions.__dataclass_fields__)}") from None
    if not isinstance(cfg, Config):
        cfg = load_config(cfg, overrides)
    elif overrides:
        raise ValueError("overrides apply when cfg is a name or path; apply them with load_config")
    if grid is None and rows is not None:
        cols = len(splits) if splits is not None else config_segments(cfg)
        grid = (int(rows), cols)
    return CompileJob(cfg, grid=grid, checkpoint=checkpoint, options=opts, splits=splits, in_shape=in_shape,
                      input_dtype=input_dtype, seed=seed).artifacts()
