"""Deterministic train/test splits where a dataset has no official one (written once, used by the
converter and by the frame-folder readers).

Rule, per class: file names in natural order (digit runs compared as numbers), permuted by
``numpy.random.default_rng([seed, class index])``; the first ``ceil(n * test_fraction)`` files of the
permutation are the test split, the rest the train split.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np


def natural_key(s: str) -> list:
    """Sort key comparing digit runs as numbers (``a2`` < ``a10``)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def seeded_split(files: Sequence[Path], seed: int, class_index: int, test_fraction: float) -> tuple[list, list]:
    """(train, test) of one class's files by the rule in the module docstring."""
    files = sorted(files, key=lambda p: natural_key(p.name))
    order = np.random.default_rng([int(seed), int(class_index)]).permutation(len(files))
    n_test = math.ceil(len(files) * test_fraction)
    test = [files[i] for i in order[:n_test]]
    train = [files[i] for i in order[n_test:]]
    return train, test
