"""Build objects by name from config dicts (``dict(type='Name', **kwargs)``), no ``eval``."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, Optional


class Registry:
    """A name -> class (or factory) table with clear errors for unknown names and bad kwargs."""

    def __init__(self, kind: str):
        self.kind = kind
        self._table: dict[str, Callable] = {}

    def register(self, name: Optional[str] = None, *aliases: str) -> Callable:
        def deco(obj: Callable) -> Callable:
            for n in (name or obj.__name__, *aliases):
                if n in self._table and self._table[n] is not obj:
                    raise ValueError(f"{self.kind} {n!r} is registered twice")
                self._table[n] = obj
            return obj
        return deco

    def names(self) -> list[str]:
        return sorted(self._table)

    def __contains__(self, name: str) -> bool:
        return name in self._table

    def get(self, name: Any, where: str = "type") -> Callable:
        if not isinstance(name, str) or name not in self._table:
            raise ValueError(f"{where}={name!r}: unknown {self.kind}; expected one of {self.names()}")
        return self._table[name]

    def build(self, cfg: Mapping, where: str = "", **extra: Any) -> Any:
        """Instantiate ``cfg['type']`` with the remaining keys (plus ``extra``) as kwargs."""
        if not isinstance(cfg, Mapping):
            raise ValueError(f"{where or self.kind}: expected a dict with a 'type' key, got {cfg!r}")
        if "type" not in cfg:
            raise ValueError(f"{where or self.kind}: missing key 'type'; expected one of {self.names()}")
        kwargs = {k: v for k, v in cfg.items() if k != "type"}
        kwargs.update(extra)
        tkey = f"{where}.type" if where else "type"
        obj = self.get(cfg["type"], tkey)
        check_kwargs(obj, kwargs, f"{where or self.kind} type={cfg['type']!r}")
        return obj(**kwargs)


def check_kwargs(fn: Callable, kwargs: Mapping[str, Any], where: str) -> None:
    """ValueError naming unexpected or missing keyword arguments of ``fn``."""
    sig = inspect.signature(fn)
    params = sig.parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        accepted = None
    else:
        accepted = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        bad = [k for k in kwargs if k not in accepted]
        if bad:
            raise ValueError(f"{where}: unexpected key(s) {bad}; accepted keys: {accepted}")
    missing = [n for n, p in params.items()
               if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
               and n not in kwargs and n != "self"]
    if missing:
        raise ValueError(f"{where}: missing required key(s) {missing}")


BACKBONES = Registry("backbone")
DATASETS = Registry("dataset")
PIPELINES = Registry("pipeline")
