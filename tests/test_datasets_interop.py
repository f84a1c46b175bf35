"""Data from the SNN ecosystem: tonic's event arrays and datasets (skipped without tonic), SpikingJelly's
frame folders and BIDL's frame caches, each written here in its own layout."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bidl_models.datasets import (Cifar10Dvs, DvsGesture, DvsMnist, SpikingJellyFrames, TonicDataset, build_dataset,
                                  from_tonic, load_object_npy, make_events, events_to_frames, tonic_to_frames)

TONIC_DT = np.dtype([("x", "<i8"), ("y", "<i8"), ("t", "<i8"), ("p", "<i8")])


def tonic_events(rng, n, w, h, dtype=TONIC_DT, tmax=100_000):
    ev = np.zeros(n, dtype)
    ev["x"], ev["y"] = rng.integers(0, w, n), rng.integers(0, h, n)
    ev["t"] = np.sort(rng.integers(0, tmax, n))
    ev["p"] = rng.integers(0, 2, n).astype(dtype["p"])
    return ev


# ------------------------------------------------------------------------------ tonic mapping

def test_tonic_events_map_explicitly_to_frames():
    # x is the column, y the row, p>0 is ON = channel 1; sensor_size is (W, H, P)
    dt = np.dtype([("t", "<u8"), ("x", "<u2"), ("y", "<u2"), ("p", "?")])     # tonic's CIFAR10DVS dtype
    ev = np.zeros(3, dt)
    ev["t"], ev["x"], ev["y"], ev["p"] = [10, 20, 30], [4, 0, 6], [1, 2, 0], [True, False, True]
    f = tonic_to_frames(ev, (7, 3, 2), frames_number=3)
    assert f.shape == (3, 2, 3, 7) and f.dtype == np.int32 and f.sum() == 3
    assert f[0, 1, 1, 4] == 1 and f[1, 0, 2, 0] == 1 and f[2, 1, 0, 6] == 1
    # polarity -1/+1 (some tonic datasets): -1 is OFF
    ev2 = np.zeros(2, TONIC_DT)
    ev2["x"], ev2["y"], ev2["t"], ev2["p"] = [1, 1], [0, 0], [0, 1], [-1, 1]
    f2 = tonic_to_frames(ev2, (2, 1, 2), 1)
    assert f2[0, 0, 0, 1] == 1 and f2[0, 1, 0, 1] == 1
    # one polarity: one channel with every event
    assert tonic_to_frames(ev2, (2, 1, 1), 1).shape == (1, 1, 1, 2) and tonic_to_frames(ev2, (2, 1, 1), 1).sum() == 2
    # the stream in this project's dtype
    s = from_tonic(ev, (7, 3, 2))
    assert s["x"].tolist() == [4, 0, 6] and s["y"].tolist() == [1, 2, 0] and s["p"].tolist() == [1, 0, 1]
    # a smaller output size scales x by W and y by H
    g = tonic_to_frames(ev, (7, 3, 2), 1, size=(3, 2))
    assert g.shape == (1, 2, 3, 2) and g[0, 1, 1, 4 * 2 // 7] == 1 and g[0, 1, 0, 6 * 2 // 7] == 1


def test_tonic_mapping_rejects_bad_events():
    ev = np.zeros(1, TONIC_DT)
    ev["x"] = 9
    with pytest.raises(ValueError, match=r"outside the sensor \(W=5, H=5\): x in \[9, 9\]"):
        tonic_to_frames(ev, (5, 5, 2), 2)
    with pytest.raises(ValueError, match=r"lack \['p'\]"):
        tonic_to_frames(np.zeros(1, [("x", "i8"), ("y", "i8"), ("t", "i8")]), (5, 5, 2), 2)
    with pytest.raises(ValueError, match=r"sensor_size=\(5, 5, 3\): 3 polarities"):
        tonic_to_frames(ev, (5, 5, 3), 2)


def test_tonic_frames_agree_with_tonics_own_toframe():
    tonic = pytest.importorskip("tonic")
    rng = np.random.default_rng(1)
    for n, T in ((100, 5), (600, 12), (30, 30)):
        ev = tonic_events(rng, n, 34, 30, tmax=1000 * T)
        ss = (34, 30, 2)
        # equal event counts per frame: identical where N is a multiple of T (tonic drops N % T events)
        ref = tonic.transforms.ToFrame(sensor_size=ss, n_event_bins=T)(ev)
        np.testing.assert_array_equal(tonic_to_frames(ev, ss, T, "number"), ref)
        # equal durations: tonic's windows are floor((t_max - t_min) / T) long and end before t_max; with a
        # span that is a multiple of T its windows equal this project's over [t_min, t_max)
        ev["t"][0], ev["t"][-1] = 0, 1000 * T
        ev["t"] = np.sort(ev["t"])
        ref_t = tonic.transforms.ToFrame(sensor_size=ss, n_time_bins=T)(ev)
        np.testing.assert_array_equal(events_to_frames(from_tonic(ev, ss), T, (30, 34), "time", (0, 1000 * T)), ref_t)
        # our default window [t_min, t_max + 1) keeps the events at t_max as well
        ours = tonic_to_frames(ev, ss, T, "time")
        assert ours.sum() == n and ours.sum() - ref_t.sum() == int((ev["t"] == ev["t"].max()).sum())


class ListEvents:
    """A tonic-style dataset object: ``(events, target)`` items and a ``sensor_size``."""

    sensor_size = (16, 12, 2)
    classes = ["left", "right", "up"]

    def __init__(self, n=5, seed=0):
        rng = np.random.default_rng(seed)
        self.items = [(tonic_events(rng, 50 + i, 16, 12), i % 3) for i in range(n)]
        self.targets = [t for _, t in self.items]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_tonic_dataset_from_an_object_through_a_config_pipeline():
    src = ListEvents()
    ds = build_dataset(dict(type="TonicDataset", dataset=src, frames_number=4, split_by="time",
                            pipeline=[dict(type="ToTensorType", keys=["img"], dtype="float32")]))
    assert len(ds) == 5 and ds.CLASSES == ["left", "right", "up"] and ds.get_gt_labels().tolist() == [0, 1, 2, 0, 1]
    s = ds[3]
    assert s["img"].dtype == torch.float32 and s["img"].shape == (4, 2, 12, 16) and int(s["gt_label"]) == 0
    np.testing.assert_array_equal(s["img"].numpy(), tonic_to_frames(src[3][0], src.sensor_size, 4, "time"))
    batch = torch.utils.data.default_collate([ds[0], ds[1]])          # what bidl_models.train's loader does
    assert batch["img"].shape == (2, 4, 2, 12, 16) and batch["gt_label"].tolist() == [0, 1]
    with pytest.raises(ValueError, match=r"has no sensor_size; pass sensor_size=\(W, H, P\)"):
        TonicDataset(dataset=[(src[0][0], 0)])


def test_tonic_dataset_by_name_reads_local_files_and_never_downloads(tmp_path):
    tonic = pytest.importorskip("tonic")
    # POKERDVS in tonic's own on-disk layout: <save_to>/POKERDVS/pips_train/<class>/*.npy (+ its archive name)
    root = tmp_path / "POKERDVS"
    rng = np.random.default_rng(2)
    for k in range(20):
        cls = ["cl", "he", "di", "sp"][k % 4]
        d = root / "pips_train" / f"x{cls}"
        d.mkdir(parents=True, exist_ok=True)
        ev = tonic_events(rng, 40, 35, 35, dtype=np.dtype(tonic.datasets.POKERDVS.dtype))
        np.save(d / f"{k:03d}.npy", np.lib.recfunctions.structured_to_unstructured(ev))
    (root / "pips_train.tar.gz").write_bytes(b"")
    ds = build_dataset(dict(type="TonicDataset", dataset="POKERDVS", data_prefix=str(tmp_path), frames_number=3),
                       where="data.train")
    assert len(ds) == 20 and ds.CLASSES == ["cl", "he", "di", "sp"]
    ev, target = ds.tonic[7]
    np.testing.assert_array_equal(ds[7]["img"], tonic_to_frames(ev, (35, 35, 2), 3))
    assert int(ds[7]["gt_label"]) == target
    # the test split is absent: one line saying where tonic expects it, no download attempted
    with pytest.raises(FileNotFoundError, match=r"^data.test: TonicDataset: data not found under '.*POKERDVS'"):
        build_dataset(dict(type="TonicDataset", dataset="POKERDVS", data_prefix=str(tmp_path), test_mode=True),
                      where="data.test")
    import urllib.request
    assert urllib.request.urlopen.__name__ == "urlopen"                 # patches are undone
    with pytest.raises(ValueError, match=r"dataset='NoSuchSet': not a tonic dataset"):
        TonicDataset(dataset="NoSuchSet")


# ------------------------------------------------------------------------------ SpikingJelly folders

def write_sj(root, classes, per_class, T=4, shape=(2, 8, 8), split=None, seed=0):
    """SpikingJelly's frames layout: root/frames_number_T_split_by_number[/split]/<class>/*.npz ('frames')."""
    rng = np.random.default_rng(seed)
    base = root / f"frames_number_{T}_split_by_number"
    if split:
        base = base / split
    written = {}
    for c in classes:
        (base / c).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            f = rng.integers(0, 5, (T,) + shape).astype(np.float32)        # SpikingJelly saves float frames
            np.savez_compressed(base / c / f"{c}_{k}.npz", frames=f)
            written[(c, k)] = f
    return written


def test_spikingjelly_gesture_folders_keep_spikingjellys_label_order(tmp_path):
    folders = [str(i) for i in range(11)]
    tr = write_sj(tmp_path / "DVS128Gesture", folders, 2, split="train")
    write_sj(tmp_path / "DVS128Gesture", folders, 1, split="test", seed=1)
    ds = DvsGesture(data_prefix=str(tmp_path / "DVS128Gesture"))
    assert len(ds) == 22 and ds.split == "train"
    # sorted folder names 0, 1, 10, 2, ...: label 2 is folder '10' (other gestures)
    order = sorted(folders)
    assert ds.CLASSES[2] == "other_gestures" and ds.CLASSES == [DvsGesture.CLASSES[int(f)] for f in order]
    labels = ds.get_gt_labels()
    i = int(np.flatnonzero(labels == 2)[0])
    np.testing.assert_array_equal(ds[i]["img"], tr[("10", 0)])
    te = build_dataset(dict(type="DvsGesture", data_prefix=str(tmp_path / "DVS128Gesture")), where="data.val")
    assert te.split == "test" and len(te) == 11
    # the generic reader: class names are the folder names in the same order
    g = SpikingJellyFrames(data_prefix=str(tmp_path / "DVS128Gesture" / "frames_number_4_split_by_number" / "test"))
    assert g.split == "test" and g.CLASSES == order and len(g) == 11


def test_spikingjelly_cifar10dvs_without_split_uses_the_seeded_rule(tmp_path):
    write_sj(tmp_path / "CIFAR10DVS", Cifar10Dvs.CLASSES, 10)
    tr = Cifar10Dvs(data_prefix=str(tmp_path / "CIFAR10DVS"), train_ratio=0.8)
    te = Cifar10Dvs(data_prefix=str(tmp_path / "CIFAR10DVS"), train_ratio=0.8, test_mode=True)
    assert (len(tr), len(te)) == (80, 20) and tr.CLASSES == Cifar10Dvs.CLASSES
    files_tr = {i["file"] for i in tr.data_infos}
    files_te = {i["file"] for i in te.data_infos}
    assert not files_tr & files_te and len(files_tr | files_te) == 100
    assert Cifar10Dvs(data_prefix=str(tmp_path / "CIFAR10DVS"), train_ratio=0.8, seed=1).data_infos != tr.data_infos
    assert [i["file"] for i in Cifar10Dvs(data_prefix=str(tmp_path / "CIFAR10DVS"), train_ratio=0.8).data_infos] == \
        [i["file"] for i in tr.data_infos]                               # deterministic
    s = tr[0]
    assert s["img"].shape == (4, 2, 8, 8) and "file" not in s


def test_spikingjelly_folder_errors_name_the_place(tmp_path):
    write_sj(tmp_path / "a", ["x", "y"], 1, T=4)
    write_sj(tmp_path / "a", ["x", "y"], 2, T=8)
    with pytest.raises(ValueError, match=r"several frame folders .*frames_number_4_split_by_number.*set frames_number"):
        SpikingJellyFrames(data_prefix=str(tmp_path / "a"))
    assert len(SpikingJellyFrames(data_prefix=str(tmp_path / "a"), frames_number=8, train_ratio=0.5)) == 2
    with pytest.raises(FileNotFoundError, match=r"frames_number_16_split_by_<number\|time>/.*found only"):
        SpikingJellyFrames(data_prefix=str(tmp_path / "a"), frames_number=16)
    write_sj(tmp_path / "b", ["0", "12"], 1, split="train")
    with pytest.raises(ValueError, match=r"class folders \['12'\] .* are not among the expected"):
        DvsGesture(data_prefix=str(tmp_path / "b"))
    write_sj(tmp_path / "c", ["x"], 1, split="test")
    np.savez(tmp_path / "c" / "frames_number_4_split_by_number" / "test" / "x" / "x_9.npz", other=np.zeros(2))
    ds = SpikingJellyFrames(data_prefix=str(tmp_path / "c"), split="test")
    assert len(ds) == 2
    with pytest.raises(ValueError, match=r"x_9\.npz' has no array 'frames'"):
        ds[1]


# ------------------------------------------------------------------------------ BIDL frame caches

def write_bidl_cache(path, samples):
    """BIDL 1.9's cache: np.save of np.asanyarray([(frames uint8, label), ...], dtype=object)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asanyarray(samples, dtype=object), allow_pickle=True)


def bidl_samples(rng, n, labels, T=10, hw=(16, 16)):
    return [(rng.integers(0, 256, (T, 2) + hw).astype(np.uint8), int(labels[i % len(labels)])) for i in range(n)]


def test_bidl_cifar10dvs_cache_from_a_bidl_config(tmp_path):
    rng = np.random.default_rng(3)
    cache = tmp_path / "DVSCIFAR10" / "frames_number_10_split_by_number"
    train, test = bidl_samples(rng, 7, range(10)), bidl_samples(rng, 3, [9, 0, 4])
    write_bidl_cache(cache / "train_datas.npy", train)
    write_bidl_cache(cache / "test_datas.npy", test)
    # BIDL's config: type from dataset_type, no data_prefix, data.data_root, flip_prob, keys=[0]
    pipe = [dict(type="RandomCropVideo", size=16, padding=2), dict(type="RandomFlipVideo", flip_prob=0.5,
                                                                    direction="horizontal"),
            dict(type="ToTensorType", keys=[0], dtype="float32")]
    tr = build_dataset(dict(type="Cifar10Dvs", pipeline=pipe), default_args=dict(data_root=str(tmp_path)),
                       where="data.train")
    va = build_dataset(dict(type="Cifar10Dvs", pipeline=[dict(type="ToTensorType", keys=[0], dtype="float32")]),
                       default_args=dict(data_root=str(tmp_path)), where="data.val")
    assert (len(tr), len(va)) == (7, 3) and tr.split == "train" and va.split == "test"
    assert va.get_gt_labels().tolist() == [9, 0, 4] and tr.get_gt_labels().tolist() == list(range(7))
    np.testing.assert_array_equal(va[1]["img"].numpy(), test[1][0].astype(np.float32))
    assert tr[0]["img"].shape == (10, 2, 16, 16) and tr[0]["img"].dtype == torch.float32
    assert "BIDL" in va.source and "test_datas.npy" in va.source
    # a cache whose pickle would run code is refused
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    arr = np.empty(1, object)
    arr[0] = Evil()
    np.save(cache / "test_datas.npy", arr, allow_pickle=True)
    with pytest.raises(ValueError, match=r"test_datas\.npy' is corrupt or unsafe: .*refusing to load \S*print"):
        load_object_npy(cache / "test_datas.npy")


def test_bidl_dvsgesture_and_dvsmnist_cache_layouts(tmp_path):
    rng = np.random.default_rng(4)
    g = tmp_path / "DvsGesture" / "frames_number_16_split_by_number"
    write_bidl_cache(g / "train" / "train_datas.npy", bidl_samples(rng, 4, [0, 2, 10, 5], T=16))
    write_bidl_cache(g / "test" / "test_datas.npy", bidl_samples(rng, 2, [1, 2], T=16))
    tr = DvsGesture(data_root=str(tmp_path))
    te = DvsGesture(data_root=str(tmp_path), test_mode=True)
    assert tr.get_gt_labels().tolist() == [0, 2, 10, 5] and te.get_gt_labels().tolist() == [1, 2]
    assert tr.CLASSES[2] == "other_gestures" and tr.CLASSES[10] == "air_guitar"  # BIDL's order: folder '9'
    assert tr[0]["img"].shape == (16, 2, 16, 16)
    m = tmp_path / "DvsMnist" / "frames_number_20_split_by_number"
    write_bidl_cache(m / "train_datas.npy", bidl_samples(rng, 3, [3, 1, 4], T=20))
    write_bidl_cache(m / "test_datas.npy", bidl_samples(rng, 1, [7], T=20))
    dm = build_dataset(dict(type="DvsMnist", pipeline=[dict(type="ResizeDVS", size=40)]),
                       default_args=dict(data_root=str(tmp_path)), where="data.test")
    assert dm.get_gt_labels().tolist() == [7] and dm[0]["img"].shape == (20, 2, 40, 40)
    # several caches: frames_number picks one
    write_bidl_cache(tmp_path / "DvsMnist" / "frames_number_10_split_by_number" / "train_datas.npy",
                     bidl_samples(rng, 1, [0], T=10))
    with pytest.raises(ValueError, match=r"several frame folders .*set frames_number"):
        DvsMnist(data_root=str(tmp_path))
    assert len(DvsMnist(data_root=str(tmp_path), frames_number=10)) == 1


def test_missing_bidl_cache_is_one_line_naming_the_place(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        build_dataset(dict(type="Cifar10Dvs", pipeline=[]), default_args=dict(data_root=str(tmp_path / "data")),
                      where="data.train")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("data.train: Cifar10Dvs: data not found; expected BIDL's frame cache")
    assert f"{tmp_path}/data/DVSCIFAR10/frames_number_<T>_split_by_number/" in msg and "Nothing is downloaded" in msg
    (tmp_path / "data" / "DvsGesture" / "frames_number_16_split_by_number").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"^DvsGesture: data not found; expected .*train/train_datas\.npy "
                                                r"or .*train_datas\.npy \(BIDL\)"):
        DvsGesture(data_root=str(tmp_path / "data"))


def test_events_to_frames_of_sj_match_reader(tmp_path):
    # a sample written by SpikingJelly's rule (equal event counts) reads back bit-exact
    rng = np.random.default_rng(5)
    ev = make_events(np.sort(rng.integers(0, 1000, 400)), rng.integers(0, 8, 400), rng.integers(0, 8, 400),
                     rng.integers(0, 2, 400))
    fr = events_to_frames(ev, 4, (8, 8)).astype(np.float32)
    d = tmp_path / "N" / "frames_number_4_split_by_number" / "test" / "3"
    d.mkdir(parents=True)
    np.savez(d / "a.npz", frames=fr)
    for c in range(10):
        (d.parent / str(c)).mkdir(exist_ok=True)
        if c != 3:
            np.savez(d.parent / str(c) / "b.npz", frames=fr * 0)
    from bidl_models.datasets import NMnist
    ds = NMnist(data_prefix=str(tmp_path / "N"), test_mode=True)
    assert len(ds) == 10
    i = int(np.flatnonzero(ds.get_gt_labels() == 3)[0])
    np.testing.assert_array_equal(ds[i]["img"], fr)
