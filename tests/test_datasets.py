"""Datasets: events-to-frames vs a naive loop, raw readers on files written here, the converter,
preprocessed frame files, pipelines, the BaseDataset extension point, DvsGlyphs, bad input."""
from __future__ import annotations

import json
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from bidl_models.datasets import (
    DATASETS, EVENT_DTYPE, BaseDataset, Cifar10Dvs, Compose, DvsGesture, DvsGlyphs, DvsMnist, NMnist,
    build_dataset, events_to_frames, load_frames_file, make_events, read_aedat2, read_aedat3, read_events,
    read_nmnist_bin, save_frames_file, write_aedat2, write_aedat3, write_nmnist_bin,
)
from bidl_models.datasets.convert import convert_recordings, seeded_split


def random_events(rng: np.random.Generator, n: int, h: int, w: int, tmax: int = 100_000, sort: bool = True):
    t = rng.integers(0, tmax, n)
    if sort:
        t = np.sort(t)
    return make_events(t, rng.integers(0, w, n), rng.integers(0, h, n), rng.integers(0, 2, n))


# ------------------------------------------------------------------------------ events -> frames

def naive_frames(ev: np.ndarray, T: int, h: int, w: int, split_by: str, t_range=None) -> np.ndarray:
    """Loop reference: frame boundaries first, then every event of each frame counted one by one."""
    order = sorted(range(len(ev)), key=lambda i: (int(ev["t"][i]), i))
    ev = [ev[i] for i in order]
    out = np.zeros((T, 2, h, w), np.int64)
    n = len(ev)
    if split_by == "number":
        for j in range(T):
            lo, hi = -(-j * n // T), -(-(j + 1) * n // T)        # ceil(j*N/T), ceil((j+1)*N/T)
            for e in ev[lo:hi]:
                out[j, 1 if e["p"] > 0 else 0, e["y"], e["x"]] += 1
        return out
    if not ev:
        return out
    t0, t1 = (min(int(e["t"]) for e in ev), max(int(e["t"]) for e in ev) + 1) if t_range is None else t_range
    span = t1 - t0
    for e in ev:
        for j in range(T):
            # t0 + j*span/T <= t < t0 + (j+1)*span/T, compared without division
            if j * span <= (int(e["t"]) - t0) * T < (j + 1) * span:
                out[j, 1 if e["p"] > 0 else 0, e["y"], e["x"]] += 1
    return out


@pytest.mark.parametrize("split_by", ["number", "time"])
@pytest.mark.parametrize("n,T", [(0, 3), (1, 4), (7, 3), (500, 7), (501, 20)])
def test_events_to_frames_matches_naive_loop(split_by, n, T):
    rng = np.random.default_rng(n * 31 + T)
    ev = random_events(rng, n, 5, 6, tmax=997, sort=False)     # unsorted, many equal timestamps
    got = events_to_frames(ev, T, (5, 6), split_by)
    assert got.dtype == np.int32 and got.shape == (T, 2, 5, 6)
    np.testing.assert_array_equal(got, naive_frames(ev, T, 5, 6, split_by))
    assert got.sum() == n                                         # every event lands in exactly one frame


def test_events_to_frames_time_window_drops_outside_events():
    rng = np.random.default_rng(0)
    ev = random_events(rng, 300, 4, 4, tmax=1000)
    got = events_to_frames(ev, 6, (4, 4), "time", t_range=(100, 850))
    np.testing.assert_array_equal(got, naive_frames(ev, 6, 4, 4, "time", (100, 850)))
    assert got.sum() == int(((ev["t"] >= 100) & (ev["t"] < 850)).sum())


def test_events_to_frames_counts_do_not_wrap():
    ev = make_events(np.arange(700), np.zeros(700), np.zeros(700), np.ones(700))   # 700 ON events, one pixel
    assert events_to_frames(ev, 1, (2, 2))[0, 1, 0, 0] == 700                       # int32 default
    sat = events_to_frames(ev, 1, (2, 2), dtype=np.uint8)
    assert sat.dtype == np.uint8 and sat[0, 1, 0, 0] == 255                         # saturates, 700 % 256 = 188
    assert sat[0, 0].sum() == 0


def test_events_to_frames_rejects_bad_input():
    ev = make_events([0, 1], [0, 9], [0, 0], [1, 0])
    with pytest.raises(ValueError, match="outside the sensor size"):
        events_to_frames(ev, 2, (4, 4))
    with pytest.raises(ValueError, match="split_by='bogus'"):
        events_to_frames(ev[:1], 2, (4, 4), split_by="bogus")


# ------------------------------------------------------------------------------ readers

def test_nmnist_reader_decodes_the_documented_bit_layout(tmp_path):
    # x=5, y=7, ON, t=0x012345 ; x=33, y=0, OFF, t=0x7FFFFF
    raw = bytes([5, 7, 0x80 | 0x01, 0x23, 0x45, 33, 0, 0x7F, 0xFF, 0xFF])
    f = tmp_path / "00001.bin"
    f.write_bytes(raw)
    ev = read_nmnist_bin(f)
    assert ev.tolist() == [(0x012345, 5, 7, 1), (0x7FFFFF, 33, 0, 0)]


def test_nmnist_round_trip_and_truncation(tmp_path):
    ev = random_events(np.random.default_rng(1), 1000, 34, 34, tmax=(1 << 23) - 1)
    f = tmp_path / "a.bin"
    write_nmnist_bin(f, ev)
    assert f.stat().st_size == 5000
    back = read_nmnist_bin(f)
    assert back.dtype == EVENT_DTYPE and np.array_equal(back, ev)
    f.write_bytes(f.read_bytes()[:-2])
    with pytest.raises(ValueError, match=r"a\.bin.*not a multiple of 5"):
        read_nmnist_bin(f)


def test_aedat2_reader_decodes_both_address_layouts(tmp_path):
    head = b"#!AER-DAT2.0\r\n# This is a raw AE data file\r\n"
    # dvs128: addr = y<<8 | x<<1 | p ; an external event (bit 15) is dropped
    recs = struct.pack(">Ii", (9 << 8) | (100 << 1) | 1, 1234) + struct.pack(">Ii", 1 << 15, 1300) + \
        struct.pack(">Ii", (127 << 8) | (0 << 1) | 0, -5 + 2000)
    f = tmp_path / "dvs128.aedat"
    f.write_bytes(head + recs)
    assert read_aedat2(f).tolist() == [(1234, 100, 9, 1), (1995, 0, 127, 0)]
    # davis: addr = y<<22 | x<<12 | p<<11 ; APS samples (bit 31) and IMU/special (bit 10) are dropped
    recs = struct.pack(">Ii", (20 << 22) | (300 << 12) | (1 << 11), 7) + struct.pack(">Ii", 1 << 31, 8) + \
        struct.pack(">Ii", (1 << 10), 9) + struct.pack(">Ii", (5 << 22) | (6 << 12), 10)
    g = tmp_path / "davis.aedat"
    g.write_bytes(head + recs)
    assert read_aedat2(g, layout="davis").tolist() == [(7, 300, 20, 1), (10, 6, 5, 0)]


@pytest.mark.parametrize("layout", ["dvs128", "davis"])
def test_aedat2_round_trip_truncation_and_version(tmp_path, layout):
    ev = random_events(np.random.default_rng(2), 777, 128, 128, tmax=10_000_000)
    f = tmp_path / "cifar10_cat_1.aedat"
    write_aedat2(f, ev, layout=layout)
    assert np.array_equal(read_aedat2(f, layout=layout), ev)
    assert np.array_equal(read_events(f, layout=layout), ev)
    f.write_bytes(f.read_bytes()[:-3])
    with pytest.raises(ValueError, match=r"cifar10_cat_1\.aedat.*truncated"):
        read_aedat2(f, layout=layout)
    g = tmp_path / "v3.aedat"
    write_aedat3(g, ev[:10])
    with pytest.raises(ValueError, match=r"v3\.aedat.*expected #!AER-DAT2.0 \(use read_aedat3\)"):
        read_aedat2(g)


def test_aedat3_reader_decodes_packets(tmp_path):
    head = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#!END-HEADER\r\n"

    def packet(etype, events, overflow=0):
        body = b"".join(struct.pack("<Ii", d, t) for d, t in events)
        return struct.pack("<hhiiiiii", etype, 1, 8, 4, overflow, len(events), len(events), len(events)) + body

    def pol(x, y, p, valid=1):
        return valid | (p << 1) | (y << 2) | (x << 17)

    raw = head + packet(0, [(1, 5)]) + packet(1, [(pol(3, 4, 1), 100), (pol(5, 6, 0, valid=0), 101),
                                                  (pol(127, 0, 0), 102)]) + \
        packet(1, [(pol(1, 2, 1), 7)], overflow=1)
    f = tmp_path / "user01_led.aedat"
    f.write_bytes(raw)
    assert read_aedat3(f).tolist() == [(100, 3, 4, 1), (102, 127, 0, 0), ((1 << 31) | 7, 1, 2, 1)]
    f.write_bytes(raw[:-4])
    with pytest.raises(ValueError, match=r"user01_led\.aedat.*truncated"):
        read_aedat3(f)
    f.write_bytes(raw[:len(head) + 10])
    with pytest.raises(ValueError, match=r"user01_led\.aedat.*packet header .* truncated"):
        read_aedat3(f)
    f.write_bytes(head[:20])
    with pytest.raises(ValueError, match=r"user01_led\.aedat.*header line at byte 14 has no end: truncated"):
        read_aedat3(f)
    f.write_bytes(b"#!AER-DAT3.1\r\n#Format: RAW\r\n")
    with pytest.raises(ValueError, match=r"user01_led\.aedat.*no '#!END-HEADER' line"):
        read_aedat3(f)


def test_aedat3_round_trip(tmp_path):
    ev = random_events(np.random.default_rng(3), 5000, 128, 128, tmax=6_000_000_000)   # crosses 2**31 us
    f = tmp_path / "g.aedat"
    write_aedat3(f, ev, packet_size=999)
    assert np.array_equal(read_aedat3(f), ev)
    assert np.array_equal(read_events(f), ev)
    with pytest.raises(FileNotFoundError, match="nope.aedat"):
        read_aedat3(tmp_path / "nope.aedat")


# ------------------------------------------------------------------------------ frame files + converter

def test_frame_files_round_trip_pkl_and_npz(tmp_path):
    rng = np.random.default_rng(4)
    frames = [rng.integers(0, 400, (3, 2, 5, 7)).astype(np.int32) * (rng.random((3, 2, 5, 7)) < 0.3)
              for _ in range(4)]
    labels = [0, 2, 1, 2]
    p = save_frames_file(tmp_path / "a" / "train.pkl", frames, labels, ["x", "y", "z"], dict(note=1))
    infos, classes, meta = load_frames_file(p)
    assert classes == ["x", "y", "z"] and meta["note"] == 1
    ds = build_dataset(dict(type="FramesDataset", data_prefix=str(tmp_path / "a" / "train")))
    assert ds.CLASSES == ["x", "y", "z"] and len(ds) == 4
    for i in range(4):
        s = ds[i]
        assert s["img"].dtype == np.uint8
        np.testing.assert_array_equal(s["img"], (frames[i] > 0).astype(np.uint8))   # guide layout: binary
        assert int(s["gt_label"]) == labels[i]
    q = save_frames_file(tmp_path / "b" / "train.npz", frames, labels, ["x", "y", "z"])
    ds2 = build_dataset(dict(type="FramesDataset", data_prefix=str(q)))
    for i in range(4):
        np.testing.assert_array_equal(ds2[i]["img"], np.minimum(frames[i], 255))   # counts, saturated
    assert ds2.CLASSES == ["x", "y", "z"]


def test_frame_file_pickle_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    f = tmp_path / "train.pkl"
    f.write_bytes(pickle.dumps(([Evil()], [0], (1, 1, 1, 1))))
    with pytest.raises(ValueError, match=r"train\.pkl.*refusing to load \S*print"):
        load_frames_file(f)
    f.write_bytes(pickle.dumps(([np.zeros(1, np.uint8)], [0], (1, 2, 2, 2)))[:-5])
    with pytest.raises(ValueError, match=r"train\.pkl.*corrupt"):
        load_frames_file(f)


def test_label_outside_class_list_is_rejected(tmp_path):
    save_frames_file(tmp_path / "train.pkl", [np.ones((2, 2, 3, 3))] * 3, [1, 12, 3])
    with pytest.raises(ValueError, match=r"DvsMnist .*train.* sample 1 has gt_label=12, outside the 10 classes"):
        DvsMnist(data_prefix=str(tmp_path / "train"))


def test_missing_dataset_file_names_the_prefix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"data.train: .*data_prefix='.*nothing/here/'.*bidl_models.datasets.convert"):
        build_dataset(dict(type="Cifar10Dvs", data_prefix=str(tmp_path) + "/nothing/here/"), where="data.train")
    with pytest.raises(ValueError, match=r"data.train.type='Nope': unknown dataset"):
        build_dataset(dict(type="Nope"), where="data.train")


def _write_cifar_raw(root: Path, per_class: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    written = {}
    for c in Cifar10Dvs.CLASSES:
        (root / c).mkdir(parents=True)
        for k in range(per_class):
            ev = random_events(rng, 200 + 10 * k, 128, 128, tmax=1_000_000)
            f = root / c / f"cifar10_{c}_{k}.aedat"
            write_aedat2(f, ev, layout="davis")
            written[f"{c}/{f.name}"] = ev
    return written


def test_convert_cifar10dvs_deterministic_split_and_frames(tmp_path):
    raw = _write_cifar_raw(tmp_path / "raw")
    out = convert_recordings("cifar10dvs", tmp_path / "raw", tmp_path / "out", timestep=4, size=(32, 32), fmt="npz",
                             test_fraction=0.34, progress=False)
    assert set(out) == {"train", "test", "val"}
    tr = Cifar10Dvs(data_prefix=str(tmp_path / "out" / "train"))
    te = Cifar10Dvs(data_prefix=str(tmp_path / "out" / "test"), test_mode=True)
    assert (len(tr), len(te)) == (10, 20)                          # ceil(3 * 0.34) = 2 test files per class
    assert sorted(tr.meta["sources"] + te.meta["sources"]) == sorted(raw)
    # the documented rule: per class, natural order shuffled by default_rng([seed, class index])
    files = [tmp_path / "raw" / "cat" / f"cifar10_cat_{k}.aedat" for k in range(3)]
    _, test_cat = seeded_split(files, 0, 3, 0.34)
    assert [f"cat/{f.name}" for f in test_cat] == [s for s in te.meta["sources"] if s.startswith("cat/")]
    for i, src in enumerate(te.meta["sources"]):
        ev = raw[src].copy()
        ev["x"], ev["y"] = ev["x"] // 4, ev["y"] // 4                  # 128 -> 32
        np.testing.assert_array_equal(te[i]["img"], np.minimum(events_to_frames(ev, 4, (32, 32)), 255))
        assert int(te[i]["gt_label"]) == Cifar10Dvs.CLASSES.index(src.split("/")[0])
    # same seed -> same split; another seed -> another one
    again = convert_recordings("cifar10dvs", tmp_path / "raw", tmp_path / "out2", 4, (32, 32), fmt="npz",
                               test_fraction=0.34, progress=False)
    assert json.loads(again["test"].with_suffix(".json").read_text())["sources"] == te.meta["sources"]
    other = convert_recordings("cifar10dvs", tmp_path / "raw", tmp_path / "out3", 4, (32, 32), fmt="npz", seed=1,
                               test_fraction=0.34, progress=False)
    assert json.loads(other["test"].with_suffix(".json").read_text())["sources"] != te.meta["sources"]


def test_convert_nmnist_and_dvsmnist(tmp_path):
    rng = np.random.default_rng(6)
    for split in ("Train", "Test"):
        for c in range(10):
            d = tmp_path / "nm" / split / str(c)
            d.mkdir(parents=True)
            if c in (2, 7):
                write_nmnist_bin(d / "00001.bin", random_events(rng, 100, 34, 34, tmax=300_000))
    convert_recordings("nmnist", tmp_path / "nm", tmp_path / "nmo", 5, (34, 34), progress=False)
    ds = NMnist(data_prefix=str(tmp_path / "nmo" / "train"))
    assert sorted(ds.get_gt_labels().tolist()) == [2, 7] and ds[0]["img"].shape == (5, 2, 34, 34)
    ev = read_nmnist_bin(tmp_path / "nm" / "Train" / "2" / "00001.bin")
    np.testing.assert_array_equal(ds[0]["img"], (events_to_frames(ev, 5, (34, 34)) > 0).astype(np.uint8))
    for c in (0, 9):
        d = tmp_path / "md" / f"grabbed_data{c}" / "scale4"
        d.mkdir(parents=True)
        for k in range(2):
            write_aedat2(d / f"mnist_{c}_scale04_{k:04d}.aedat", random_events(rng, 50, 128, 128))
    out = convert_recordings("dvsmnist", tmp_path / "md", tmp_path / "mdo", 3, (40, 40), test_fraction=0.5,
                             progress=False)
    tr, va = DvsMnist(data_prefix=str(out["train"])), DvsMnist(data_prefix=str(tmp_path / "mdo" / "val"))
    assert sorted(tr.get_gt_labels().tolist()) == [0, 9] and len(va) == 2


def test_convert_dvsgesture_windows_and_official_rule(tmp_path):
    root = tmp_path / "DvsGesture"
    root.mkdir()
    rng = np.random.default_rng(7)
    evs = {}
    for name in ("user01_fluorescent", "user24_led"):
        ev = random_events(rng, 3000, 128, 128, tmax=3_000_000)
        write_aedat3(root / f"{name}.aedat", ev)
        (root / f"{name}_labels.csv").write_text("class,startTime_usec,endTime_usec\n3,100000,1100000\n"
                                                 "11,1500000,2900000\n")
        evs[name] = ev
    convert_recordings("dvsgesture", root, tmp_path / "o", 6, (32, 32), progress=False)
    tr = DvsGesture(data_prefix=str(tmp_path / "o" / "train"))
    te = DvsGesture(data_prefix=str(tmp_path / "o" / "test"))
    assert tr.get_gt_labels().tolist() == [2, 10] and te.get_gt_labels().tolist() == [2, 10]
    ev = evs["user24_led"]
    ev = ev[(ev["t"] >= 1_500_000) & (ev["t"] < 2_900_000)].copy()
    ev["x"], ev["y"] = ev["x"] // 4, ev["y"] // 4
    np.testing.assert_array_equal(te[1]["img"], (events_to_frames(ev, 6, (32, 32)) > 0).astype(np.uint8))
    # official lists take precedence over the user-number rule
    (root / "trials_to_train.txt").write_text("user24_led.aedat\n")
    (root / "trials_to_test.txt").write_text("user01_fluorescent.aedat\n")
    convert_recordings("dvsgesture", root, tmp_path / "o2", 6, (32, 32), progress=False)
    assert DvsGesture(data_prefix=str(tmp_path / "o2" / "train")).meta["sources"][0].startswith("user24")
    # a label outside 1..11 names the csv file and line
    (root / "user01_fluorescent_labels.csv").write_text("class,startTime_usec,endTime_usec\n12,1,5\n")
    with pytest.raises(ValueError, match=r"user01_fluorescent_labels\.csv.* line 2: class 12 is outside 1\.\.11"):
        convert_recordings("dvsgesture", root, tmp_path / "o3", 6, (32, 32), progress=False)


def test_convert_bad_input_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar10dvs raw dataset folder '.*missing': no such folder"):
        convert_recordings("cifar10dvs", tmp_path / "missing", tmp_path / "o", 4, (32, 32), progress=False)
    _write_cifar_raw(tmp_path / "raw", per_class=2)
    bad = tmp_path / "raw" / "dog" / "cifar10_dog_0.aedat"
    bad.write_bytes(bad.read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"cifar10_dog_0\.aedat.*truncated"):
        convert_recordings("cifar10dvs", tmp_path / "raw", tmp_path / "o", 4, (32, 32), test_fraction=0.5,
                           progress=False)
    out = convert_recordings("cifar10dvs", tmp_path / "raw", tmp_path / "o", 4, (32, 32), test_fraction=0.5,
                             skip_bad=True, progress=False)
    skipped = sum((json.loads(p.with_suffix(".json").read_text())["skipped"] for p in (out["train"], out["test"])), [])
    assert len(skipped) == 1 and "cifar10_dog_0.aedat" in skipped[0]
    assert len(Cifar10Dvs(data_prefix=str(out["train"]))) + len(Cifar10Dvs(data_prefix=str(out["test"]))) == 19
    # events off the sensor (N-MNIST is 34x34) name the file
    for split in ("Train", "Test"):
        for c in range(10):
            (tmp_path / "nm" / split / str(c)).mkdir(parents=True)
    write_nmnist_bin(tmp_path / "nm" / "Train" / "4" / "00009.bin", make_events([1, 2], [3, 200], [4, 5], [1, 0]))
    with pytest.raises(ValueError, match=r"00009\.bin.*do not fit the 34x34 sensor"):
        convert_recordings("nmnist", tmp_path / "nm", tmp_path / "o4", 4, (34, 34), progress=False)


# ------------------------------------------------------------------------------ pipelines

def video(shape=(3, 2, 6, 8), seed=0):
    return np.random.default_rng(seed).integers(0, 9, shape).astype(np.uint8)


def test_random_crop_video_is_one_window_of_the_padded_frames():
    img = video()
    np.random.seed(0)
    seen = set()
    for _ in range(30):
        out = Compose([dict(type="RandomCropVideo", size=(6, 8), padding=2)])({"img": img})["img"]
        assert out.shape == img.shape
        padded = np.pad(img, [(0, 0), (0, 0), (2, 2), (2, 2)])
        hits = [(a, b) for a in range(5) for b in range(5) if np.array_equal(out, padded[..., a:a + 6, b:b + 8])]
        assert hits, "the crop is not a window of the zero-padded video"
        seen.add(hits[0])
    assert len(seen) > 5                                          # offsets vary
    with pytest.raises(ValueError, match="larger than the padded frame"):
        Compose([dict(type="RandomCropVideo", size=20)])({"img": img})


def test_random_flip_video_flips_the_named_axis():
    img = video()
    h = Compose([dict(type="RandomFlipVideo", flip_ratio=1.0, direction="horizontal")])({"img": img.copy()})
    np.testing.assert_array_equal(h["img"], img[..., ::-1])       # left-right: W reversed
    assert h["flip"] and h["flip_direction"] == "horizontal"
    v = Compose([dict(type="RandomFlipVideo", flip_ratio=1.0, direction="vertical")])({"img": img.copy()})
    np.testing.assert_array_equal(v["img"], img[..., ::-1, :])    # up-down: H reversed
    n = Compose([dict(type="RandomFlipVideo", flip_ratio=0.0)])({"img": img.copy()})
    np.testing.assert_array_equal(n["img"], img)
    with pytest.raises(ValueError, match="direction='diagonal'"):
        Compose([dict(type="RandomFlipVideo", direction="diagonal")])


def test_resize_dvs_modes():
    img = video((2, 2, 8, 12)).astype(np.int32)
    s = Compose([dict(type="ResizeDVS", size=(4, 3), mode="sum")])({"img": img})["img"]
    assert s.shape == (2, 2, 4, 3) and s.sum() == img.sum()
    assert s[1, 0, 2, 1] == img[1, 0, 4:6, 4:8].sum()
    nn = Compose([dict(type="ResizeDVS", size=(4, 6), mode="nearest")])({"img": img})["img"]
    np.testing.assert_array_equal(nn, img[..., 1::2, 1::2])        # pixel centres of 2x2 blocks
    up = Compose([dict(type="ResizeDVS", size=16, interpolation="nearest")])({"img": img[..., :8, :8]})["img"]
    np.testing.assert_array_equal(up, img[..., :8, :8].repeat(2, -2).repeat(2, -1))
    with pytest.raises(ValueError, match="not an integer downscale"):
        Compose([dict(type="ResizeDVS", size=5, mode="sum")])({"img": img})


def test_to_tensor_type_to_tensor_collect():
    pipe = Compose([dict(type="ToTensorType", keys=["img"], dtype="float32"), dict(type="ToTensor", keys=["gt_label"]),
                    dict(type="Collect", keys=["img", "gt_label"], meta_keys=["sample_idx"])])
    out = pipe({"img": video(), "gt_label": np.int64(3), "sample_idx": 5, "junk": 1})
    assert set(out) == {"img", "gt_label", "img_metas"} and out["img_metas"] == {"sample_idx": 5}
    assert out["img"].dtype == torch.float32 and torch.equal(out["img"], torch.from_numpy(video()).float())
    assert out["gt_label"].dtype == torch.int64 and int(out["gt_label"]) == 3
    with pytest.raises(KeyError, match=r"Collect: the sample has no key\(s\) \['gt_label'\]"):
        Compose([dict(type="Collect", keys=["img", "gt_label"])])({"img": 1})
    with pytest.raises(ValueError, match="dtype='float7'"):
        Compose([dict(type="ToTensorType", keys=["img"], dtype="float7")])
    with pytest.raises(ValueError, match=r"pipeline\[1\].type='Nope': unknown pipeline"):
        Compose([dict(type="ToTensor", keys=["img"]), dict(type="Nope")])


# ------------------------------------------------------------------------------ extension point

def test_custom_dataset_from_config_and_topk_evaluate():
    @DATASETS.register("ToyDvsForTest")
    class Toy(BaseDataset):
        CLASSES = ["a", "b", "c", "d", "e", "f"]

        def load_annotations(self):
            return [{"img": np.full((2, 2, 3, 3), i, np.uint8), "gt_label": np.int64(i % 6)} for i in range(4)]

    ds = build_dataset(dict(type="ToyDvsForTest", data_prefix="unused", test_mode=True,
                            pipeline=[dict(type="ToTensorType", keys=["img"]), dict(type="Collect", keys=["img"])]))
    assert isinstance(ds, Toy) and len(ds) == 4 and float(ds[2]["img"].max()) == 2.0
    scores = np.array([[9, 1, 0, 0, 0, 0],      # label 0: top-1 right
                       [9, 0, 8, 7, 6, 5],      # label 1: rank 6 -> wrong even at top-5
                       [0, 9, 8, 0, 0, 0],      # label 2: rank 2
                       [1, 2, 3, 4, 5, 6]], float)  # label 3: rank 3
    assert ds.evaluate(scores, metric_options={"topk": (1, 2, 5)}) == {
        "accuracy_top-1": 25.0, "accuracy_top-2": 50.0, "accuracy_top-5": 75.0}
    with pytest.raises(ValueError, match=r"expected \[4, nclass\]"):
        ds.evaluate(scores[:3])


# ------------------------------------------------------------------------------ DvsGlyphs

def test_dvsglyphs_deterministic_per_index_and_split():
    a = DvsGlyphs(num_samples=30, split="train")
    b = DvsGlyphs(num_samples=30, split="train")
    fa = [a.frames(i) for i in (7, 3, 29)]
    fb = [b.frames(i) for i in (29, 3, 7)][::-1]                 # other order, other instance: same samples
    for x, y in zip(fa, fb):
        assert np.array_equal(x, y)
    assert fa[0].shape == (20, 2, 40, 40) and fa[0].dtype == np.uint8
    assert not np.array_equal(a.frames(3), DvsGlyphs(num_samples=30, split="test").frames(3))
    assert not np.array_equal(a.frames(3), DvsGlyphs(num_samples=30, seed=1).frames(3))
    assert a.get_gt_labels().tolist() == [i % 10 for i in range(30)]
    np.testing.assert_array_equal(a.frames(5), events_to_frames(a.events(5), 20, (40, 40), "time", (0, 100_000),
                                                                np.uint8))
    ev = a.events(5)
    assert len(ev) > 1000 and set(np.unique(ev["p"])) == {0, 1} and np.all(np.diff(ev["t"]) >= 0)
    with pytest.raises(IndexError, match="index 30 out of range"):
        a.frames(30)


def test_dvsglyphs_bilinear_is_the_masked_four_tap_sum_bit_for_bit():
    """The generator's bilinear sampler (padded, no masks) against the plain definition: each of the 4
    taps inside the image adds ``float32(w * img[r, c])`` in order, taps outside add nothing."""
    from bidl_models.datasets.glyphs import FONT, _bilinear

    def plain(img, u, v):
        h, w = img.shape
        u0, v0 = np.floor(u), np.floor(v)
        fu, fv = u - u0, v - v0
        out = np.zeros(u.shape, np.float32)
        for du, dv, wgt in ((0, 0, (1 - fu) * (1 - fv)), (1, 0, fu * (1 - fv)), (0, 1, (1 - fu) * fv),
                            (1, 1, fu * fv)):
            cu, cv = u0.astype(np.int64) + du, v0.astype(np.int64) + dv
            ok = (cu >= 0) & (cu < w) & (cv >= 0) & (cv < h)
            out[ok] += (wgt[ok] * img[cv[ok], cu[ok]]).astype(np.float32)
        return out

    rng = np.random.default_rng(3)
    for trial in range(12):
        img = FONT[trial % 10] if trial % 2 else rng.random(tuple(rng.integers(2, 9, 2))).astype(np.float32)
        u, v = rng.uniform(-40, 40, (2, 5, 16, 16))
        if trial % 3 == 0:
            u, v = np.round(u), np.round(v)        # on cell centres and edges exactly
        got, want = _bilinear(img, u, v), plain(img, u, v)
        assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), want.view(np.uint32)), trial


PINNED_GLYPHS = "f3f4764b9958d0fa21897611f1deaa633e871b0597eac11e85deb642e3a7667b"   # test split, samples 0..4


def test_dvsglyphs_samples_are_the_ones_the_shipped_weights_were_trained_on():
    """A faster generator must not change the data: the test split's first samples, pinned."""
    import hashlib
    ds = DvsGlyphs(num_samples=1000, split="test")
    digest = hashlib.sha256(b"".join(ds.frames(i).tobytes() for i in range(5))).hexdigest()
    assert digest == PINNED_GLYPHS, digest


def test_dvsglyphs_is_fast_and_sized_by_config():
    ds = build_dataset(dict(type="DvsGlyphs", num_samples=40, timestep=8, size=(24, 32), test_mode=True))
    assert ds.split == "test" and ds[0]["img"].shape == (8, 2, 24, 32)
    t0 = time.perf_counter()
    for i in range(40):
        ds.frames(i)
    per = (time.perf_counter() - t0) / 40
    assert per < 0.05, f"{per * 1000:.1f} ms per sample"           # ~5 ms measured on 2 shared cores


def test_synthetic_data_is_seeded_and_is_the_runtimes_stream():
    """``bidl_models.datasets.synthetic``: the stream the runtime feeds a plan without data is this
    source's (frames and token ids), and a dataset sample depends only on (seed, index)."""
    import torch

    from bidl_models.datasets.synthetic import SyntheticData, synthetic_samples
    from bidl_runtime.driver.samples import samples_for
    from conftest import make_plan, tiny_glyphs
    plan = make_plan(tiny_glyphs(3), (1, 1))
    stream, what = samples_for(None, plan, 4, seed=5)
    assert what.startswith("synthetic seeded event frames 3x2x16x16")
    assert all(torch.equal(a, b) for a, b in zip(stream, synthetic_samples(3, (2, 16, 16), 4, seed=5), strict=True))
    kw = dict(T=6, shape=(), n=3, seed=1, dtype=torch.int64, high=17)
    ids = list(synthetic_samples(**kw))
    assert [x.dtype for x in ids] == [torch.int64] * 3 and max(int(x.max()) for x in ids) < 17
    assert all(torch.equal(a, b) for a, b in zip(ids, synthetic_samples(**kw), strict=True))
    ds = SyntheticData(6, 4, (2, 8, 8), nclass=11, seed=3)
    again = SyntheticData(6, 4, (2, 8, 8), nclass=11, seed=3)
    assert len(ds) == 6 and ds[2]["img"].shape == (4, 2, 8, 8) and ds[2]["img"].dtype == torch.float32
    assert torch.equal(ds[5]["img"], again[5]["img"]) and not torch.equal(ds[4]["img"], ds[5]["img"])
    assert list(ds.get_gt_labels()) == list(again.get_gt_labels()) and ds.get_gt_labels().max() < 11
    tok = SyntheticData(5, 7, (), nclass=1, dtype="int64", high=20)
    assert tok[0]["img"].shape == (7,) and tok[0]["img"].dtype == torch.int64 and int(tok[0]["img"].max()) < 20
    assert set(tok.get_gt_labels()) <= {0, 1}
    with pytest.raises(ValueError, match=r"SyntheticData: n=0: expected an int >= 1"):
        SyntheticData(0, 4, (2, 8, 8), nclass=3)
