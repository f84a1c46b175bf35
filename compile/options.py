"""How to compile: every knob of :func:`compile.compile_spec` in one dataclass."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from bidl_models.specs import known_fields


@dataclass(frozen=True)
class CompileOptions:
    """Options of a compile (what the model is, is the :class:`~bidl_models.model_spec.ModelSpec`'s).

    ``out``: artifact root (``<out>/<net>-<key>/model_<i>/t<L>_b<B>...``, ``key``: the model spec's, see
    :attr:`~bidl_models.model_spec.ModelSpec.key`: every command that compiles the same model, weights
    and cut finds the same directory); ``batch``: samples per call the
    specs are written for (exported dynamic when torch.export allows); ``aot``: AOTInductor package
    instead of a torch.export program; ``fast_load``: also write the TorchScript form that the
    runtime's cells load in milliseconds (checked bit-exact against the exported program);
    ``verify``: check every new artifact against the eager segment over ``verify_chunks`` chunks
    (max abs diff <= ``tol``), on the dataset's first test sample when ``use_dataset``.
    """

    out: str = "artifacts"
    force: bool = False
    aot: bool = False
    batch: int = 1
    device: str = "cpu"
    fast_load: bool = True
    verify: bool = True
    use_dataset: bool = True
    verify_chunks: int = 3
    tol: float = 1e-5
    progress: bool = True
    verbose: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", str(self.out))
        if not isinstance(self.batch, int) or isinstance(self.batch, bool) or self.batch < 1:
            raise ValueError(f"batch={self.batch!r}: expected a positive int")
        if not isinstance(self.verify_chunks, int) or self.verify_chunks < 1:
            raise ValueError(f"verify_chunks={self.verify_chunks!r}: expected >= 1")

    @property
    def root(self) -> Path:
        return Path(self.out)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CompileOptions":
        return cls(**known_fields(cls, d, "compile options"))
