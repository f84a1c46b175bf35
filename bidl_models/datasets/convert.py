"""Raw DVS dataset folder -> preprocessed frame files for the dataset classes.

``python -m bidl_models.datasets.convert --dataset NAME --root RAW_DIR --out OUT_DIR [options]``
writes ``OUT_DIR/train.<fmt>``, ``OUT_DIR/test.<fmt>`` and ``OUT_DIR/val.<fmt>`` (a link to the test
file: none of these datasets has a separate validation split), each with a ``.json`` sidecar
(classes, options, split rule, source files). Configs then point ``data_prefix`` at
``OUT_DIR/train`` etc. Formats: ``pkl`` (the user guide's bit-packed binary frames) or ``npz``
(event counts saturated at 255); see :mod:`bidl_models.datasets.files`.

Raw layouts and splits:

* ``nmnist``: ``ROOT/Train/<digit>/*.bin`` and ``ROOT/Test/<digit>/*.bin`` (official split), 34x34.
* ``dvsmnist`` (MNIST-DVS): AEDAT 2.0 files (DVS128 layout) under ``ROOT``, the label being the digit
  that ends the first folder name under ``ROOT`` (``grabbed_data3/scale4/...``); ``--pattern`` picks
  files (e.g. ``'*/scale4/*.aedat'``). 128x128.
* ``cifar10dvs``: ``ROOT/<class name>/*.aedat`` (AEDAT 2.0, ``--aedat2-layout`` default 'davis'),
  128x128.
* ``dvsgesture``: ``ROOT/userNN_<lighting>.aedat`` (AEDAT 3.1) with ``userNN_<lighting>_labels.csv``
  (``class,startTime_usec,endTime_usec``, classes 1..11); one sample per csv row (events with
  ``start <= t < end``). Split: ``ROOT/trials_to_train.txt`` / ``trials_to_test.txt`` when present
  (the official lists), else users 1-23 train and 24-29 test (the official rule). 128x128.

Where no split is official (dvsmnist, cifar10dvs) it is deterministic: per class, file names in natural
order (numbers compared as numbers), shuffled by ``numpy.random.default_rng([seed, class index])``;
the first ``ceil(n * test_fraction)`` are the test split (defaults: seed 0, fraction 0.1, i.e.
900 / 100 per CIFAR10-DVS class).

Frames: events -> ``--timestep`` frames (``--split-by`` number | time) of ``--size H W``, coordinates
scaled as ``x * W // sensor_W`` (so 128 -> 40 pools neighbouring pixels).
"""
from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from bidl_grid.command import run_command

from ..checkpoint import link_or_copy
from .cifar10dvs import Cifar10Dvs
from .dvsgesture import DvsGesture
from .events import events_to_frames
from .files import save_frames_file
from .readers import read_aedat2, read_aedat3, read_nmnist_bin
from .splits import natural_key, seeded_split

DATASET_NAMES = ("nmnist", "dvsmnist", "cifar10dvs", "dvsgesture")
SENSORS = {"nmnist": (34, 34), "dvsmnist": (128, 128), "cifar10dvs": (128, 128), "dvsgesture": (128, 128)}


def _need_dir(p: Path, what: str) -> Path:
    if not p.is_dir():
        raise FileNotFoundError(f"{what} {str(p)!r}: no such folder")
    return p


# ------------------------------------------------------------------------------------- listings
# A "job" is (source file, label, optional (t_start, t_end) window); splits map to lists of jobs.
Job = tuple[Path, int, Optional[tuple[int, int]]]


def list_nmnist(root: Path, **_: Any) -> tuple[dict[str, list[Job]], list[str], str]:
    splits: dict[str, list[Job]] = {}
    for split, sub in (("train", "Train"), ("test", "Test")):
        d = _need_dir(root / sub, "N-MNIST split folder")
        jobs = []
        for c in range(10):
            cdir = _need_dir(d / str(c), "N-MNIST class folder")
            jobs += [(f, c, None) for f in sorted(cdir.glob("*.bin"), key=lambda p: natural_key(p.name))]
        splits[split] = jobs
    return splits, [str(c) for c in range(10)], "official Train/ and Test/ folders"


def _split_per_class(by_class: dict[int, list[Path]], seed: int, test_fraction: float
                     ) -> dict[str, list[Job]]:
    out: dict[str, list[Job]] = {"train": [], "test": []}
    for c in sorted(by_class):
        tr, te = seeded_split(by_class[c], seed, c, test_fraction)
        out["train"] += [(f, c, None) for f in tr]
        out["test"] += [(f, c, None) for f in te]
    return out


def _rule(seed: int, test_fraction: float) -> str:
    return (f"per class: natural file-name order, shuffled by numpy default_rng([{seed}, class index]); "
            f"first ceil(n * {test_fraction}) files -> test")


def list_dvsmnist(root: Path, seed: int = 0, test_fraction: float = 0.1, pattern: str = "**/*.aedat",
                  **_: Any) -> tuple[dict[str, list[Job]], list[str], str]:
    by_class: dict[int, list[Path]] = {}
    for f in root.glob(pattern):
        top = f.relative_to(root).parts[0]
        m = re.search(r"(\d)$", top)
        if not m or f.is_dir():
            continue
        by_class.setdefault(int(m.group(1)), []).append(f)
    if not by_class:
        raise FileNotFoundError(f"MNIST-DVS root {str(root)!r}: no files match {pattern!r} under folders whose "
                                "name ends in the digit (e.g. grabbed_data3/scale4/*.aedat)")
    return _split_per_class(by_class, seed, test_fraction), [str(c) for c in range(10)], _rule(seed, test_fraction)


def list_cifar10dvs(root: Path, seed: int = 0, test_fraction: float = 0.1, **_: Any
                    ) -> tuple[dict[str, list[Job]], list[str], str]:
    by_class: dict[int, list[Path]] = {}
    for c, name in enumerate(Cifar10Dvs.CLASSES):
        files = sorted(_need_dir(root / name, "CIFAR10-DVS class folder").glob("*.aedat"))
        if not files:
            raise FileNotFoundError(f"CIFAR10-DVS class folder {str(root / name)!r} has no .aedat files")
        by_class[c] = files
    return _split_per_class(by_class, seed, test_fraction), list(Cifar10Dvs.CLASSES), _rule(seed, test_fraction)


def read_gesture_labels(path: Path, n_classes: int = 11) -> list[tuple[int, int, int]]:
    """``[(label 0..10, start_us, end_us)]`` from a DVS128 Gesture ``*_labels.csv``."""
    rows = []
    with open(path, newline="") as fh:
        for i, row in enumerate(csv.reader(fh)):
            if not row or not row[0].strip():
                continue
            if i == 0 and not row[0].strip().lstrip("-").isdigit():
                continue  # header line
            try:
                c, s, e = (int(v) for v in row[:3])
            except ValueError:
                raise ValueError(f"labels file {str(path)!r} line {i + 1}: {row!r}: expected class,start,end ints") from None
            if not 1 <= c <= n_classes:
                raise ValueError(f"labels file {str(path)!r} line {i + 1}: class {c} is outside 1..{n_classes}")
            if e <= s:
                raise ValueError(f"labels file {str(path)!r} line {i + 1}: end {e} <= start {s}")
            rows.append((c - 1, s, e))
    return rows


def list_dvsgesture(root: Path, **_: Any) -> tuple[dict[str, list[Job]], list[str], str]:
    files = sorted(root.glob("user*.aedat"), key=lambda p: natural_key(p.name))
    if not files:
        raise FileNotFoundError(f"DVS128 Gesture root {str(root)!r}: no user*.aedat files")
    lists = {s: root / f"trials_to_{s}.txt" for s in ("train", "test")}
    if all(p.is_file() for p in lists.values()):
        names = {s: {ln.strip() for ln in p.read_text().splitlines() if ln.strip()} for s, p in lists.items()}
        rule = "official trials_to_train.txt / trials_to_test.txt"

        def split_of(f: Path) -> Optional[str]:
            return next((s for s, n in names.items() if f.name in n), None)
    else:
        rule = "official rule: users 1-23 train, 24-29 test (no trials_to_*.txt found)"

        def split_of(f: Path) -> Optional[str]:
            m = re.match(r"user(\d+)", f.name)
            return None if not m else ("train" if int(m.group(1)) <= 23 else "test")
    splits: dict[str, list[Job]] = {"train": [], "test": []}
    for f in files:
        s = split_of(f)
        if s is None:
            continue
        lab = f.with_name(f.stem + "_labels.csv")
        if not lab.is_file():
            raise FileNotFoundError(f"DVS128 Gesture: {str(f)!r} has no labels file {str(lab)!r}")
        splits[s] += [(f, c, (st, en)) for c, st, en in read_gesture_labels(lab, len(DvsGesture.CLASSES))]
    return splits, list(DvsGesture.CLASSES), rule


LISTERS: dict[str, Callable[..., tuple[dict[str, list[Job]], list[str], str]]] = {
    "nmnist": list_nmnist, "dvsmnist": list_dvsmnist, "cifar10dvs": list_cifar10dvs, "dvsgesture": list_dvsgesture}


# ------------------------------------------------------------------------------------- conversion

class Converter:
    """Reads one job's events and makes its frames (picklable, for worker pools)."""

    def __init__(self, dataset: str, timestep: int, size: tuple[int, int], split_by: str, layout: str):
        self.dataset, self.timestep, self.size = dataset, int(timestep), (int(size[0]), int(size[1]))
        self.split_by, self.layout = split_by, layout
        self.sensor = SENSORS[dataset]
        self._cache: tuple[Optional[Path], Optional[np.ndarray]] = (None, None)

    def read(self, path: Path) -> np.ndarray:
        if self._cache[0] == path:
            return self._cache[1]  # type: ignore[return-value]
        if self.dataset == "nmnist":
            ev = read_nmnist_bin(path)
        elif self.dataset == "dvsgesture":
            ev = read_aedat3(path)
        else:
            ev = read_aedat2(path, layout=self.layout)
        sh, sw = self.sensor
        if len(ev) and (ev["x"].max() >= sw or ev["y"].max() >= sh or ev["x"].min() < 0 or ev["y"].min() < 0):
            raise ValueError(f"event file {str(path)!r}: coordinates x<={ev['x'].max()}, y<={ev['y'].max()} do not fit "
                             f"the {sw}x{sh} sensor of {self.dataset} (wrong --aedat2-layout, or a corrupt file)")
        self._cache = (path, ev)
        return ev

    def __call__(self, job: Job) -> np.ndarray:
        path, _, window = job
        ev = self.read(path)
        if window is not None:
            ev = ev[(ev["t"] >= window[0]) & (ev["t"] < window[1])]
        if len(ev) == 0:
            raise ValueError(f"event file {str(path)!r}{f' window {window}' if window else ''}: no events")
        ev = ev.copy()
        (sh, sw), (h, w) = self.sensor, self.size
        ev["x"] = (ev["x"].astype(np.int64) * w) // sw
        ev["y"] = (ev["y"].astype(np.int64) * h) // sh
        return events_to_frames(ev, self.timestep, self.size, self.split_by, dtype=np.uint16)


def convert_recordings(dataset: str, root: str | Path, out: str | Path, timestep: int, size: Sequence[int],
            split_by: str = "number", fmt: str = "pkl", seed: int = 0, test_fraction: float = 0.1,
            layout: Optional[str] = None, pattern: str = "**/*.aedat", skip_bad: bool = False,
            progress: bool = True) -> dict[str, Path]:
    """Convert a raw dataset folder; returns ``{'train': path, 'test': path, 'val': path}``."""
    from tqdm import tqdm
    if dataset not in DATASET_NAMES:
        raise ValueError(f"--dataset {dataset!r}: expected one of {list(DATASET_NAMES)}")
    if fmt not in ("pkl", "npz"):
        raise ValueError(f"--format {fmt!r}: expected pkl or npz")
    if not 0 < test_fraction < 1:
        raise ValueError(f"--test-fraction {test_fraction}: expected in (0, 1)")
    root = _need_dir(Path(root), f"{dataset} raw dataset folder")
    layout = layout or ("davis" if dataset == "cifar10dvs" else "dvs128")
    splits, classes, rule = LISTERS[dataset](root, seed=seed, test_fraction=test_fraction, pattern=pattern)
    conv = Converter(dataset, timestep, tuple(size), split_by, layout)
    out = Path(out)
    written: dict[str, Path] = {}
    for split, jobs in splits.items():
        if not jobs:
            raise FileNotFoundError(f"{dataset} root {str(root)!r}: the {split} split has no samples")
        frames, labels, sources, skipped = [], [], [], []
        for job in tqdm(jobs, desc=f"{dataset} {split}", disable=not progress, dynamic_ncols=True):
            try:
                frames.append(conv(job))
            except ValueError as e:
                if not skip_bad:
                    raise
                skipped.append(str(e))
                continue
            labels.append(job[1])
            sources.append(str(job[0].relative_to(root)) + (f"@{job[2][0]}-{job[2][1]}" if job[2] else ""))
        meta = dict(dataset=dataset, root=str(root), timestep=int(timestep), size=list(size), split_by=split_by,
                    sensor=list(SENSORS[dataset]), aedat2_layout=layout, split=split, split_rule=rule, seed=seed,
                    test_fraction=test_fraction, sources=sources, skipped=skipped,
                    frame_values="binary (event present)" if fmt == "pkl" else "event counts, saturated at 255")
        written[split] = save_frames_file(out / f"{split}.{fmt}", frames, labels, classes, meta)
    val = out / f"val.{fmt}"
    link_or_copy(written["test"], val)
    link_or_copy(written["test"].with_suffix(".json"), val.with_suffix(".json"))
    written["val"] = val
    return written


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bidl_models.datasets.convert", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, choices=DATASET_NAMES)
    p.add_argument("--root", required=True, help="raw dataset folder")
    p.add_argument("--out", required=True, help="output folder (train/test/val files)")
    p.add_argument("--timestep", type=int, required=True, help="frames per sample (T)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="frame size (default: the sensor's)")
    p.add_argument("--split-by", default="number", choices=("number", "time"))
    p.add_argument("--format", default="pkl", choices=("pkl", "npz"))
    p.add_argument("--seed", type=int, default=0, help="seed of the train/test split where none is official")
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--aedat2-layout", choices=("dvs128", "davis"), default=None,
                   help="AEDAT 2.0 address layout (default: davis for cifar10dvs, dvs128 for dvsmnist)")
    p.add_argument("--pattern", default="**/*.aedat", help="dvsmnist: glob of files under --root")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable files (listed in the .json) instead of failing")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def run(argv: Optional[Sequence[str]] = None) -> dict[str, Path]:
    """Parse ``argv``, convert, print the files written; :func:`convert_recordings`' result."""
    a = parse_args(argv)
    size = tuple(a.size) if a.size else SENSORS[a.dataset]
    out = convert_recordings(a.dataset, a.root, a.out, a.timestep, size, a.split_by, a.format, a.seed, a.test_fraction,
                  a.aedat2_layout, a.pattern, a.skip_bad, progress=not a.no_progress)
    for k, v in out.items():
        print(f"{k}: {v}")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The CLI: 0 once the files are written (errors raise, see :func:`bidl_grid.command.run_command`)."""
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main))
