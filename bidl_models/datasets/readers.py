"""Readers (and small writers, for tests and tools) of the raw event formats DVS datasets ship in.

All readers return an :data:`~bidl_models.datasets.events.EVENT_DTYPE` array (``t`` in microseconds,
``x``/``y`` as stored in the file, ``p`` 1 = ON / 0 = OFF) and raise ValueError naming the file when it
is truncated or not in the expected format.

* N-MNIST / N-Caltech101 ``.bin``: 5 bytes per event, big-endian 40-bit word: bits 39-32 x, 31-24 y,
  bit 23 polarity (1 ON), bits 22-0 timestamp (us).
* AEDAT 2.0 (jAER; CIFAR10-DVS, MNIST-DVS): ``#`` header lines (first ``#!AER-DAT2.0``), then 8-byte
  records: big-endian uint32 address, big-endian int32 timestamp (us). Two address layouts:
  ``'dvs128'``: bit 0 polarity, bits 1-7 x, bits 8-14 y, bit 15 external event (dropped);
  ``'davis'``: bit 31 APS/ADC sample and bit 10 IMU/special (both dropped), bits 12-21 x, bits 22-30 y,
  bit 11 polarity.
* AEDAT 3.1 (cAER; DVS128 Gesture): ``#`` header lines ending with ``#!END-HEADER``, then packets of a
  28-byte little-endian header (int16 eventType, int16 eventSource, int32 eventSize, eventTSOffset,
  eventTSOverflow, eventCapacity, eventNumber, eventValid) and ``eventNumber * eventSize`` bytes of
  events. Polarity events (type 1, 8 bytes): uint32 data (bit 0 valid, bit 1 polarity, bits 2-16 y,
  bits 17-31 x) and int32 timestamp; full time = ``eventTSOverflow << 31 | timestamp``. Other packet
  types and invalid events are skipped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .events import EVENT_DTYPE, make_events

AEDAT2_LAYOUTS = ("dvs128", "davis")
_PACKET_HEADER = np.dtype([("type", "<i2"), ("source", "<i2"), ("size", "<i4"), ("tsoffset", "<i4"),
                           ("tsoverflow", "<i4"), ("capacity", "<i4"), ("number", "<i4"), ("valid", "<i4")])
POLARITY_EVENT = 1


def _read_bytes(path: str | Path) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"event file {str(path)!r}: no such file")
    return p.read_bytes()


# ------------------------------------------------------------------------------------------- N-MNIST

def read_nmnist_bin(path: str | Path) -> np.ndarray:
    """Events of an N-MNIST / N-Caltech101 ``.bin`` file (34x34 sensor for N-MNIST)."""
    raw = _read_bytes(path)
    if len(raw) % 5:
        raise ValueError(f"N-MNIST file {str(path)!r}: {len(raw)} bytes is not a multiple of 5 "
                         "(40-bit events): truncated or not an N-MNIST .bin file")
    d = np.frombuffer(raw, np.uint8).reshape(-1, 5).astype(np.int64)
    t = ((d[:, 2] & 0x7F) << 16) | (d[:, 3] << 8) | d[:, 4]
    return make_events(t, d[:, 0], d[:, 1], d[:, 2] >> 7)


def write_nmnist_bin(path: str | Path, events: np.ndarray) -> None:
    """Write events in the N-MNIST ``.bin`` layout (x, y < 256, t < 2**23)."""
    t, x, y, p = (events[k].astype(np.int64) for k in ("t", "x", "y", "p"))
    if len(t) and (t.min() < 0 or t.max() >= 1 << 23 or x.min() < 0 or x.max() > 255 or y.min() < 0
                   or y.max() > 255):
        raise ValueError("write_nmnist_bin: needs 0 <= t < 2**23 and 0 <= x, y <= 255")
    out = np.empty((len(t), 5), np.uint8)
    out[:, 0], out[:, 1] = x, y
    out[:, 2] = ((p > 0).astype(np.int64) << 7) | (t >> 16)
    out[:, 3], out[:, 4] = (t >> 8) & 0xFF, t & 0xFF
    Path(path).write_bytes(out.tobytes())


# ------------------------------------------------------------------------------------------ headers

def split_header(raw: bytes, path: str | Path, end_marker: bytes | None = None) -> tuple[list[str], int]:
    """``#`` header lines of an AEDAT file and the offset of its binary body.

    With ``end_marker`` the header runs up to and including that line (AEDAT 3.x), else while lines
    start with ``#`` (AEDAT 2.0).
    """
    lines, off = [], 0
    while off < len(raw) and raw[off:off + 1] == b"#":
        nl = raw.find(b"\n", off)
        if nl < 0:
            raise ValueError(f"AEDAT file {str(path)!r}: header line at byte {off} has no end: truncated")
        line = raw[off:nl + 1].decode("latin-1").rstrip("\r\n")
        lines.append(line)
        off = nl + 1
        if end_marker is not None and line.startswith(end_marker.decode()):
            return lines, off
    if end_marker is not None:
        raise ValueError(f"AEDAT file {str(path)!r}: no {end_marker.decode()!r} line: truncated or "
                         "not an AEDAT 3.x file")
    return lines, off


def aedat_version(raw: bytes) -> str:
    """``'2.0'``, ``'3.1'``, ... from the first header line, or ``''`` if there is none."""
    if not raw.startswith(b"#!AER-DAT"):
        return ""
    nl = raw.find(b"\n")
    return raw[9:nl if nl >= 0 else 64].decode("latin-1").strip()


# --------------------------------------------------------------------------------------- AEDAT 2.0

def read_aedat2(path: str | Path, layout: str = "dvs128") -> np.ndarray:
    """Events of a jAER AEDAT 2.0 file; ``layout`` 'dvs128' or 'davis' (see the module docstring)."""
    if layout not in AEDAT2_LAYOUTS:
        raise ValueError(f"layout={layout!r}: expected one of {list(AEDAT2_LAYOUTS)}")
    raw = _read_bytes(path)
    version = aedat_version(raw)
    if not version.startswith("2"):
        raise ValueError(f"AEDAT file {str(path)!r}: version {version or 'unknown (no #!AER-DAT line)'}; "
                         "expected #!AER-DAT2.0" + (" (use read_aedat3)" if version.startswith("3") else ""))
    _, off = split_header(raw, path)
    body = raw[off:]
    if len(body) % 8:
        raise ValueError(f"AEDAT 2.0 file {str(path)!r}: body of {len(body)} bytes is not a multiple of 8 "
                         "(address + timestamp records): truncated")
    rec = np.frombuffer(body, np.dtype([("a", ">u4"), ("t", ">i4")]))
    a = rec["a"].astype(np.int64)
    t = rec["t"].astype(np.int64)
    if layout == "dvs128":
        keep = ((a >> 15) & 1) == 0
        x, y, p = (a >> 1) & 0x7F, (a >> 8) & 0x7F, a & 1
    else:
        keep = (((a >> 31) & 1) == 0) & (((a >> 10) & 1) == 0)
        x, y, p = (a >> 12) & 0x3FF, (a >> 22) & 0x1FF, (a >> 11) & 1
    return make_events(t[keep], x[keep], y[keep], p[keep])


def write_aedat2(path: str | Path, events: np.ndarray, layout: str = "dvs128",
                 header: Sequence[str] = ("# written by bidl_models",)) -> None:
    """Write events as a jAER AEDAT 2.0 file with the given address layout."""
    if layout not in AEDAT2_LAYOUTS:
        raise ValueError(f"layout={layout!r}: expected one of {list(AEDAT2_LAYOUTS)}")
    x, y, p = (events[k].astype(np.int64) for k in ("x", "y", "p"))
    p = (p > 0).astype(np.int64)
    if layout == "dvs128":
        a = (y << 8) | (x << 1) | p
    else:
        a = (y << 22) | (x << 12) | (p << 11)
    rec = np.empty(len(a), np.dtype([("a", ">u4"), ("t", ">i4")]))
    rec["a"], rec["t"] = a, events["t"]
    head = "#!AER-DAT2.0\r\n" + "".join(f"{h}\r\n" for h in header)
    Path(path).write_bytes(head.encode("latin-1") + rec.tobytes())


# --------------------------------------------------------------------------------------- AEDAT 3.1

def read_aedat3(path: str | Path) -> np.ndarray:
    """Polarity events of a cAER AEDAT 3.x file (all sources), in file order."""
    raw = _read_bytes(path)
    version = aedat_version(raw)
    if not version.startswith("3"):
        raise ValueError(f"AEDAT file {str(path)!r}: version {version or 'unknown (no #!AER-DAT line)'}; "
                         "expected #!AER-DAT3.x" + (" (use read_aedat2)" if version.startswith("2") else ""))
    _, off = split_header(raw, path, end_marker=b"#!END-HEADER")
    chunks = []
    n = len(raw)
    while off < n:
        if off + 28 > n:
            raise ValueError(f"AEDAT 3 file {str(path)!r}: packet header at byte {off} is cut off: truncated")
        h = np.frombuffer(raw, _PACKET_HEADER, count=1, offset=off)[0]
        size, number = int(h["size"]), int(h["number"])
        if size <= 0 or number < 0:
            raise ValueError(f"AEDAT 3 file {str(path)!r}: packet at byte {off} has eventSize={size}, "
                             f"eventNumber={number}: corrupt")
        end = off + 28 + size * number
        if end > n:
            raise ValueError(f"AEDAT 3 file {str(path)!r}: packet at byte {off} needs {size * number} bytes of "
                             f"events, only {n - off - 28} left: truncated")
        if int(h["type"]) == POLARITY_EVENT:
            if size != 8:
                raise ValueError(f"AEDAT 3 file {str(path)!r}: polarity packet at byte {off} has "
                                 f"eventSize={size}, expected 8: corrupt")
            ev = np.frombuffer(raw, np.dtype([("d", "<u4"), ("t", "<i4")]), count=number, offset=off + 28)
            d = ev["d"].astype(np.int64)
            valid = (d & 1) == 1
            t = (np.int64(int(h["tsoverflow"])) << 31) | ev["t"].astype(np.int64)
            chunks.append(make_events(t[valid], ((d >> 17) & 0x7FFF)[valid], ((d >> 2) & 0x7FFF)[valid],
                                      ((d >> 1) & 1)[valid]))
        off = end
    return np.concatenate(chunks) if chunks else np.zeros(0, EVENT_DTYPE)


def write_aedat3(path: str | Path, events: np.ndarray, packet_size: int = 4096, source: int = 1,
                 extra_packets: bool = True) -> None:
    """Write polarity events as an AEDAT 3.1 file (packets of ``packet_size`` events; with
    ``extra_packets`` a special-event packet is put first, as real recordings have other types)."""
    head = ("#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#Start-Time: 1970-01-01 00:00:00\r\n"
            "#!END-HEADER\r\n").encode("latin-1")
    parts = [head]

    def packet(etype: int, payload: np.ndarray, number: int, tsoverflow: int) -> bytes:
        h = np.zeros(1, _PACKET_HEADER)
        h["type"], h["source"], h["size"], h["tsoffset"] = etype, source, 8, 4
        h["tsoverflow"], h["capacity"], h["number"], h["valid"] = tsoverflow, number, number, number
        return h.tobytes() + payload.tobytes()

    rec_dt = np.dtype([("d", "<u4"), ("t", "<i4")])
    if extra_packets:
        sp = np.zeros(2, rec_dt)
        sp["d"] = [1 | (7 << 1), 1 | (8 << 1)]  # valid special events; their content is not polarity data
        parts.append(packet(0, sp, 2, 0))
    t = events["t"].astype(np.int64)
    for s in range(0, len(events), packet_size):
        e = events[s:s + packet_size]
        te = t[s:s + packet_size]
        for ov in np.unique(te >> 31):
            m = (te >> 31) == ov
            rec = np.empty(int(m.sum()), rec_dt)
            rec["d"] = (1 | ((e["p"][m] > 0).astype(np.int64) << 1) | (e["y"][m].astype(np.int64) << 2)
                        | (e["x"][m].astype(np.int64) << 17))
            rec["t"] = te[m] & 0x7FFFFFFF
            parts.append(packet(POLARITY_EVENT, rec, len(rec), int(ov)))
    Path(path).write_bytes(b"".join(parts))


def read_events(path: str | Path, **kw) -> np.ndarray:
    """Dispatch on the file: ``.bin`` (N-MNIST), else AEDAT 2.0 / 3.x by its version line."""
    p = Path(path)
    if p.suffix.lower() == ".bin":
        return read_nmnist_bin(p)
    raw_head = _read_bytes(p)[:64]
    v = aedat_version(raw_head)
    if v.startswith("3"):
        return read_aedat3(p)
    if v.startswith("2"):
        return read_aedat2(p, **kw)
    raise ValueError(f"event file {str(path)!r}: not .bin and no #!AER-DAT2/3 version line")
