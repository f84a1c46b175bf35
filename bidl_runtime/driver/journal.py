"""A run's journal: finished sample ids and their outputs, so a rerun after a driver crash skips them.

    journal = Journal.open("run.jsonl", identity={"config": ..., "model": ..., "data": ...})
    report = grid.run(samples, journal=journal)   # skips journal.done, records each result as it arrives

The file is JSON lines, appended and flushed per sample (a crashed driver loses at most the line it
was writing, which the next open ignores): a header ``{"journal": 1, "identity": {...}}``, then
``{"sample": i, "output": [...], "shape": [...], "label": l}`` or ``{"sample": i, "rejected": why}``.
A journal written for another model, weights or data source is refused (the outputs would not be
this run's), naming the key that differs.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import Tensor

VERSION = 1


class Journal:
    """An open journal: ``done`` (sample -> record) from earlier runs (what this run skips);
    ``record`` appends this run's results (not kept in memory)."""

    def __init__(self, path: Path, identity: dict[str, Any], done: dict[int, dict], fh: Any):
        self.path, self.identity, self.done, self._fh = path, identity, done, fh
        self.resumed = len(done)

    @classmethod
    def open(cls, path: str | Path, identity: Mapping[str, Any]) -> "Journal":
        """Open (or create) the journal at ``path`` for a run with this ``identity``; ValueError
        naming the file if it belongs to another run or is not a journal."""
        p = Path(path)
        ident = json.loads(json.dumps(dict(identity)))   # plain JSON types, as read back
        done: dict[int, dict] = {}
        if p.exists() and p.stat().st_size > 0:
            lines = p.read_text(errors="replace").splitlines()
            try:
                head = json.loads(lines[0])
            except (json.JSONDecodeError, IndexError):
                head = None
            if not isinstance(head, dict) or head.get("journal") != VERSION:
                raise ValueError(f"--journal {str(p)!r}: not a bidl-grid journal (its first line is no journal "
                                 "header); give a new file")
            theirs = head.get("identity", {})
            for k in sorted(set(theirs) | set(ident)):
                if theirs.get(k) != ident.get(k):
                    raise ValueError(f"--journal {str(p)!r} belongs to another run: {k} is {theirs.get(k)!r} there, "
                                     f"{ident.get(k)!r} here; give a new file")
            cut = False
            for n, line in enumerate(lines[1:], start=2):
                try:
                    rec = json.loads(line)
                    done[int(rec["sample"])] = rec
                except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                    if n != len(lines):   # only the last line may be cut short (a crash while writing it)
                        raise ValueError(f"--journal {str(p)!r}: line {n} is damaged") from None
                    cut = True
            if cut or not p.read_bytes().endswith(b"\n"):
                data = p.read_bytes()   # drop the cut record, so the next one starts a line of its own
                keep = data.rstrip(b"\n").rfind(b"\n") + 1 if cut else len(data)
                with p.open("r+b") as f:
                    f.truncate(keep)
                    if not cut:
                        f.seek(keep)
                        f.write(b"\n")
            fh = p.open("a")
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            fh = p.open("w")
            fh.write(json.dumps({"journal": VERSION, "identity": ident}) + "\n")
            fh.flush()
        return cls(p, ident, done, fh)

    def output(self, i: int) -> Optional[Tensor]:
        """The recorded output of sample ``i`` (None if it was rejected)."""
        rec = self.done[i]
        if "output" not in rec:
            return None
        return torch.tensor(rec["output"], dtype=torch.float32).reshape(rec["shape"])

    def record(self, i: int, output: Optional[Tensor] = None, label: Optional[int] = None,
               rejected: Optional[str] = None) -> None:
        """Append sample ``i``'s result (or its rejection) and flush it to the OS."""
        rec: dict[str, Any] = {"sample": i}
        if rejected is not None:
            rec["rejected"] = rejected
        else:
            rec["output"] = output.reshape(-1).tolist()
            rec["shape"] = list(output.shape)
            if label is not None:
                rec["label"] = label
        self._fh.write(json.dumps(rec) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
