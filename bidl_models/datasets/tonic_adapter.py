"""tonic's event datasets as frame datasets (``TonicDataset``), with the mapping written out.

tonic (``pip install 'bidl-grid[tonic]'``) gives each sample as ``(events, target)``: ``events`` a
numpy structured array with (at least) the fields ``x``, ``y``, ``t``, ``p``, and the dataset's
``sensor_size = (W, H, P)`` (width first). The mapping to this project's frames ``[T, C, H, W]``:

* ``x`` -> column (W axis), ``y`` -> row (H axis), origin top-left, as tonic draws them;
* ``P == 2``: ``p > 0`` (1 / True) is ON = channel 1, ``p <= 0`` (0 / False / -1) is OFF = channel 0,
  the order of this project's frames and BIDL's (tonic's own ``ToFrame`` uses ``p`` as the channel
  index, which is the same for 0/1 polarities); ``P == 1``: all events in one channel;
* ``t`` is kept in the dataset's unit (microseconds for the DVS datasets) as int64;
* events -> ``frames_number`` frames of counts by :func:`~.events.events_to_frames`
  (``split_by='number'``: equal event counts; ``'time'``: equal durations over the sample's span);
  ``size=(H, W)`` scales coordinates as ``x * W // sensor_W``; counts are int32 (never wrapped).
  Every event is counted: tonic's own ``ToFrame(n_event_bins=T)`` drops the last ``N mod T`` events
  and ``ToFrame(n_time_bins=T)`` uses windows of ``floor(span / T)`` that end before the last
  timestamp (the tests show both give the same frames as here where those rules coincide).

Events outside the sensor raise ValueError naming the sample. ``dataset`` is a tonic dataset class
name (``'NMNIST'``, ``'DVSGesture'``, ``'CIFAR10DVS'``, ...) built with ``save_to=data_prefix``,
``train=not test_mode`` where it takes that argument, and ``dataset_args``; or any object with
``__len__``, ``__getitem__`` giving ``(events, target)`` and ``sensor_size`` (e.g. a tonic dataset
you built, with its own transforms). Nothing is downloaded: a tonic dataset whose files are not
under ``data_prefix`` raises one line saying where tonic expects them.
"""
from __future__ import annotations

import contextlib
import importlib
import inspect
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np

from ..registry import DATASETS
from .base import BaseDataset
from .events import SPLIT_BY, events_to_frames, make_events

TONIC_FIELDS = ("x", "y", "t", "p")


def _sensor(sensor_size: Sequence[int], where: str) -> tuple[int, int, int]:
    if len(sensor_size) != 3 or min(int(s) for s in sensor_size) < 1:
        raise ValueError(f"{where}: sensor_size={tuple(sensor_size)!r}: expected tonic's (W, H, P)")
    w, h, p = (int(s) for s in sensor_size)
    if p not in (1, 2):
        raise ValueError(f"{where}: sensor_size={tuple(sensor_size)!r}: {p} polarities; expected 1 or 2")
    return w, h, p


def from_tonic(events: np.ndarray, sensor_size: Sequence[int], where: str = "tonic events") -> np.ndarray:
    """tonic's structured events -> this project's :data:`~.events.EVENT_DTYPE` stream (module docstring);
    with one polarity (``P == 1``) every event gets ``p = 0``."""
    names = events.dtype.names or ()
    missing_f = [f for f in TONIC_FIELDS if f not in names]
    if missing_f:
        raise ValueError(f"{where}: events with fields {list(names)} lack {missing_f}; expected tonic's x, y, t, p")
    w, h, P = _sensor(sensor_size, where)
    x, y = events["x"].astype(np.int64), events["y"].astype(np.int64)
    if len(x) and (x.min() < 0 or x.max() >= w or y.min() < 0 or y.max() >= h):
        raise ValueError(f"{where}: events outside the sensor (W={w}, H={h}): x in [{x.min()}, {x.max()}], "
                         f"y in [{y.min()}, {y.max()}]")
    p = (events["p"].astype(np.int64) > 0).astype(np.int64) if P == 2 else np.zeros(len(x), np.int64)
    return make_events(events["t"].astype(np.int64), x, y, p)


def tonic_to_frames(events: np.ndarray, sensor_size: Sequence[int], frames_number: int, split_by: str = "number",
                    size: Optional[Sequence[int]] = None, where: str = "tonic events") -> np.ndarray:
    """int32 ``[T, P, H, W]`` counts of tonic events (module docstring)."""
    w, h, P = _sensor(sensor_size, where)
    ev = from_tonic(events, sensor_size, where)
    oh, ow = (h, w) if size is None else (int(size[0]), int(size[1]))
    if (oh, ow) != (h, w):
        ev["x"] = (ev["x"].astype(np.int64) * ow) // w
        ev["y"] = (ev["y"].astype(np.int64) * oh) // h
    frames = events_to_frames(ev, frames_number, (oh, ow), split_by)
    return frames if P == 2 else frames[:, :1]


class DownloadRefused(FileNotFoundError):
    """A tonic dataset tried to download its files."""


def _not_found(where: str, location: str, detail: str = "") -> str:
    detail = " ".join(detail.split())
    return (f"{where}: data not found under {location!r} (tonic's layout{'; ' + detail if detail else ''}); "
            "nothing is downloaded: fetch it with tonic yourself, or put the files there")


@contextlib.contextmanager
def no_downloads(where: str, location: str) -> Iterator[None]:
    """Inside: tonic's download helpers (and urllib's) raise a one-line FileNotFoundError instead."""
    import sys
    import urllib.request

    def refuse(*_: Any, **__: Any) -> None:
        raise DownloadRefused(_not_found(where, location))

    patches: list[tuple[Any, str, Any]] = []
    for name, mod in list(sys.modules.items()):
        if name == "tonic" or name.startswith("tonic."):
            for attr in ("download_url", "download_and_extract_archive", "_urlretrieve"):
                if hasattr(mod, attr):
                    patches.append((mod, attr, getattr(mod, attr)))
    ds_mod = sys.modules.get("tonic.dataset")
    if ds_mod is not None:
        patches.append((ds_mod.Dataset, "download", ds_mod.Dataset.download))
    patches += [(urllib.request, "urlretrieve", urllib.request.urlretrieve),
                (urllib.request, "urlopen", urllib.request.urlopen)]
    try:
        for obj, attr, _ in patches:
            setattr(obj, attr, refuse)
        yield
    finally:
        for obj, attr, orig in reversed(patches):
            setattr(obj, attr, orig)


def build_tonic_dataset(name: str, save_to: str, train: bool, args: Mapping[str, Any], where: str) -> Any:
    try:
        datasets = importlib.import_module("tonic.datasets")
    except ImportError:
        raise ImportError(f"{where}: dataset={name!r} needs tonic: `pip install 'bidl-grid[tonic]'` "
                          "(or `pip install tonic`)") from None
    cls = getattr(datasets, str(name), None)
    if not inspect.isclass(cls):
        have = sorted(n for n in dir(datasets) if inspect.isclass(getattr(datasets, n)) and not n.startswith("_"))
        raise ValueError(f"{where}: dataset={name!r}: not a tonic dataset; expected one of {have}")
    kw = dict(args)
    params = inspect.signature(cls).parameters
    if "save_to" in params:
        kw.setdefault("save_to", save_to)
    if "train" in params:
        kw.setdefault("train", train)
    location = str(Path(kw.get("save_to", save_to)) / cls.__name__)
    with no_downloads(where, location):
        try:
            return cls(**kw)
        except DownloadRefused:
            raise
        except FileNotFoundError as e:
            raise FileNotFoundError(_not_found(where, location, str(e))) from None
        except TypeError as e:
            raise ValueError(f"{where}: tonic.datasets.{name}({', '.join(sorted(kw))}): {e}") from None


@DATASETS.register("TonicDataset", "Tonic")
class TonicDataset(BaseDataset):
    """A tonic dataset as event-count frames ``[T, P, H, W]`` (module docstring).

    ``frames_number``: T; ``split_by``: 'number' | 'time'; ``size``: (H, W) output (default the
    sensor's); ``sensor_size``: overrides the dataset's (W, H, P); ``classes``: class names (default
    the dataset's ``classes`` if it has them).
    """

    def __init__(self, dataset: Any, data_prefix: Optional[str] = "data", pipeline: Sequence[Any] = (),
                 classes: Optional[Sequence[str]] = None, test_mode: bool = False, frames_number: int = 10,
                 split_by: str = "number", size: Optional[Sequence[int]] = None,
                 sensor_size: Optional[Sequence[int]] = None, dataset_args: Optional[Mapping[str, Any]] = None):
        where = "TonicDataset"
        if split_by not in SPLIT_BY:
            raise ValueError(f"{where}: split_by={split_by!r}: expected one of {list(SPLIT_BY)}")
        if isinstance(frames_number, bool) or int(frames_number) < 1:
            raise ValueError(f"{where}: frames_number={frames_number!r}: expected a positive int")
        if size is not None and (len(size) != 2 or min(int(s) for s in size) < 1):
            raise ValueError(f"{where}: size={size!r}: expected (H, W)")
        if isinstance(dataset, str):
            self.tonic = build_tonic_dataset(dataset, str(data_prefix or "data"), not test_mode,
                                             dataset_args or {}, where)
        else:
            if dataset_args:
                raise ValueError(f"{where}: dataset_args apply to a dataset given by name, not to an object")
            self.tonic = dataset
        if not hasattr(self.tonic, "__getitem__") or not hasattr(self.tonic, "__len__"):
            raise ValueError(f"{where}: dataset={dataset!r}: expected a tonic dataset name or a dataset object")
        sensor = sensor_size if sensor_size is not None else getattr(self.tonic, "sensor_size", None)
        if sensor is None:
            raise ValueError(f"{where}: {type(self.tonic).__name__} has no sensor_size; pass sensor_size=(W, H, P)")
        self.sensor_size = _sensor(sensor, where)
        self.frames_number, self.split_by = int(frames_number), split_by
        self.size = None if size is None else (int(size[0]), int(size[1]))
        if classes is None and getattr(self.tonic, "classes", None):
            classes = [str(c) for c in self.tonic.classes]
        super().__init__(data_prefix, pipeline, classes, test_mode)

    @property
    def source(self) -> str:
        return f"tonic {type(self.tonic).__name__}"

    def load_annotations(self) -> list[dict]:
        return [{"index": i} for i in range(len(self.tonic))]

    def get_gt_labels(self) -> np.ndarray:
        targets = getattr(self.tonic, "targets", None)
        if targets is not None and len(targets) == len(self):
            return np.asarray([int(np.asarray(t)) for t in targets], dtype=np.int64)
        return np.asarray([int(np.asarray(self.tonic[i][1])) for i in range(len(self))], dtype=np.int64)

    def check_labels(self) -> None:
        """Labels are checked per sample (reading all of a tonic dataset up front is slow)."""

    def load_sample(self, info: dict) -> dict:
        i = int(info["index"])
        events, target = self.tonic[i][:2]
        where = f"TonicDataset {self.source} sample {i}"
        img = tonic_to_frames(np.asarray(events), self.sensor_size, self.frames_number, self.split_by, self.size, where)
        label = np.int64(int(np.asarray(target)))
        if self.CLASSES is not None and not 0 <= label < len(self.CLASSES):
            raise ValueError(f"{where}: target {int(label)} outside the {len(self.CLASSES)} classes")
        return {"img": img, "gt_label": label}
