"""The compile package's errors."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional


class ArtifactError(ValueError):
    """An artifact that must not be used: missing, corrupt, stale, mismatched or incompatible.

    ``path`` is the offending file, ``reason`` one of ``'missing' | 'corrupt' | 'mismatch' |
    'incompatible'``, ``diffs`` the differing fields as ``{field: (artifact's, expected)}``.
    """

    def __init__(self, path: str | Path, reason: str, message: str,
                 diffs: Optional[Mapping[str, tuple[Any, Any]]] = None):
        self.path, self.reason, self.diffs = str(path), reason, dict(diffs or {})
        super().__init__(f"{path}: {message}")


class VerificationError(RuntimeError):
    """A freshly built artifact disagrees with the eager segment by more than the tolerance."""
