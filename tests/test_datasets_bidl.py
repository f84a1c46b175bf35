"""The datasets of BIDL's classification configs, each read from small files written here in its format
and run through the config's own pipelines (as BIDL's files write them), then batched as training does."""
from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch

from bidl_models.datasets import (ESImagenet, Imdb, Jester20bn, Luna16Cls, Luna16Cls32, MNIST, RgbGesture,
                                  build_dataset, read_idx, write_idx)
from bidl_models.datasets.pipelines import resize_frames


def batch_of(ds, n=2):
    """What ``bidl_models.train``'s DataLoader does with the samples (default collate)."""
    return torch.utils.data.default_collate([ds[i] for i in range(n)])


# ------------------------------------------------------------------------------ MNIST (idx)

def write_mnist(root, n_train=6, n_test=4, gz=False):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        imgs = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        ext = ".gz" if gz else ""
        write_idx(root / f"{prefix}-images-idx3-ubyte{ext}", imgs)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{ext}", labels)
        out[prefix] = (imgs, labels)
    return out


def test_idx_files_round_trip_and_their_layout(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a-idx3-ubyte", a)
    raw = (tmp_path / "a-idx3-ubyte").read_bytes()
    assert raw[:4] == b"\x00\x00\x08\x03" and raw[4:16] == b"\x00\x00\x00\x02\x00\x00\x00\x03\x00\x00\x00\x04"
    assert raw[16:] == a.tobytes()
    np.testing.assert_array_equal(read_idx(tmp_path / "a-idx3-ubyte"), a)
    f = np.linspace(-1, 1, 6, dtype=np.float32)
    write_idx(tmp_path / "f.gz", f)
    assert gzip.decompress((tmp_path / "f.gz").read_bytes())[2] == 0x0D
    np.testing.assert_array_equal(read_idx(tmp_path / "f.gz"), f)
    (tmp_path / "bad").write_bytes(raw[:-3])
    with pytest.raises(ValueError, match=r"idx file '.*bad': 21 data bytes for shape \[2, 3, 4\]"):
        read_idx(tmp_path / "bad")


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_with_the_three_encoder_configs(tmp_path, gz):
    data = write_mnist(tmp_path / "MNIST" / "raw", gz=gz)
    prefix = str(tmp_path / "MNIST" / "raw") + "/"
    for encoder, shape in ((dict(type="Rate", time_steps=20), (20, 1, 28, 28)),
                           (dict(type="Temporal", time_steps=8, tau=7, linear=False), (8, 1, 28, 28)),
                           (dict(type="Population", time_steps=10, pop_neuron=5), (10, 5, 28, 28))):
        train_pipeline = [dict(type="Resize", size=(28, 28)), encoder, dict(type="ToTensor", keys=["gt_label"])]
        test_pipeline = [dict(type="Resize", size=(28, 28)), encoder]
        tr = build_dataset(dict(type="MNIST", data_prefix=prefix, pipeline=train_pipeline), where="data.train")
        te = build_dataset(dict(type="MNIST", data_prefix=prefix, pipeline=test_pipeline, test_mode=True),
                           where="data.test")
        assert (len(tr), len(te)) == (6, 4)
        assert te.get_gt_labels().tolist() == data["t10k"][1].tolist()
        s = te[1]
        assert s["img"].shape == shape and s["img"].dtype == np.float32 and set(np.unique(s["img"])) <= {0.0, 1.0}
        b = batch_of(tr)
        assert b["img"].shape == (2,) + shape and b["img"].dtype == torch.float32 and b["gt_label"].shape == (2,)
    raw = MNIST(data_prefix=prefix, test_mode=True)[2]
    np.testing.assert_allclose(raw["img"], data["t10k"][0][2] / 255.0, rtol=1e-6)   # pixels in [0, 1]
    # latency code of real pixels: the brightest pixel spikes first
    t = build_dataset(dict(type="MNIST", data_prefix=prefix, test_mode=True,
                           pipeline=[dict(type="Temporal", time_steps=8, tau=7)]))[2]["img"]
    bright = np.unravel_index(np.argmax(data["t10k"][0][2]), (28, 28))
    first = np.argmax(t[:, 0], axis=0)
    assert first[bright] == first[t[:, 0].any(0)].min()


def test_mnist_missing_files_one_line(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        build_dataset(dict(type="MNIST", data_prefix=str(tmp_path / "raw")), where="data.train")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("data.train: MNIST: data not found; expected ")
    assert "raw/train-images-idx3-ubyte[.gz]" in msg and "Nothing is downloaded" in msg


# ------------------------------------------------------------------------------ LUNA16

def test_luna16_cls_and_cls32(tmp_path):
    rng = np.random.default_rng(1)
    d32, d = tmp_path / "train3", tmp_path / "cls"
    d32.mkdir()
    d.mkdir()
    a = {}
    for name, lab in (("1_b.npy", 1), ("0_a.npy", 0), ("1_c.npy", 1)):
        a[name] = rng.random((8, 32, 32)).astype(np.float32)
        np.save(d32 / name, a[name])
        np.save(d / name, rng.random((8, 16, 16, 3)).astype(np.float32))
    pipe = [dict(type="ToTensorTypeDict", keys=["img"], dtype="float32"), dict(type="ToTensor", keys=["gt_label"])]
    ds = build_dataset(dict(type="Luna16Cls32", data_prefix=str(d32) + "/", pipeline=pipe))
    assert ds.get_gt_labels().tolist() == [0, 1, 1]                       # sorted file names, label = first char
    np.testing.assert_array_equal(ds[0]["img"].numpy(), a["0_a.npy"][:, None])
    assert batch_of(ds)["img"].shape == (2, 8, 1, 32, 32)
    c = Luna16Cls(data_prefix=str(d))
    assert c[0]["img"].shape == (8, 3, 16, 16)
    np.testing.assert_array_equal(c[1]["img"], np.load(d / "1_b.npy").transpose(0, 3, 1, 2))
    np.save(d32 / "x_bad.npy", np.zeros((8, 32, 32)))
    with pytest.raises(ValueError, match=r"x_bad\.npy': the file name must start with the label digit"):
        Luna16Cls32(data_prefix=str(d32))
    with pytest.raises(ValueError, match=r"holds \[8, 16, 16, 3\]; expected \[T, H, W\]"):
        Luna16Cls32(data_prefix=str(d))[0]
    with pytest.raises(FileNotFoundError, match=r"^Luna16Cls32: data not found; expected .*nothing/<label><name>\.npy"):
        Luna16Cls32(data_prefix=str(tmp_path / "nothing"))


# ------------------------------------------------------------------------------ RGB-Gesture

def test_rgbgesture_pickle_jitter_copy_and_resize(tmp_path):
    rng = np.random.default_rng(2)
    data = rng.integers(0, 256, (3, 6, 2, 20, 20)).astype(np.uint8)
    labels = np.array([4, 0, 10], np.uint8)
    (tmp_path / "rgb").mkdir()
    with open(tmp_path / "rgb" / "train.pkl", "wb") as fh:
        pickle.dump([data, labels], fh)
    (tmp_path / "rgb" / "val.pkl").write_bytes((tmp_path / "rgb" / "train.pkl").read_bytes())
    pipe = [dict(type="RandomCropVideoDict", size=40, padding=4), dict(type="ToTensorTypeDict", keys=["img"],
                                                                         dtype="float32"),
            dict(type="ToTensor", keys=["gt_label"])]
    tr = build_dataset(dict(type="RgbGesture", data_prefix=str(tmp_path / "rgb") + "/", ann_file="train.pkl",
                            pipeline=pipe, shape=(40, 40)), where="data.train")
    va = RgbGesture(data_prefix=str(tmp_path / "rgb"), ann_file="val.pkl", test_mode=True, shape=(40, 40))
    assert len(tr) == 6 and len(va) == 3 and tr.get_gt_labels().tolist() == [4, 0, 10, 4, 0, 10]
    assert batch_of(tr)["img"].shape == (2, 6, 2, 40, 40)
    raw = RgbGesture(data_prefix=str(tmp_path / "rgb"), ann_file="train.pkl")
    np.testing.assert_array_equal(raw[1]["img"], data[1])
    jit = raw[4]["img"].astype(int)                                        # the jittered copy of sample 1
    noise = jit - data[1].astype(int)
    assert 0 < np.abs(noise).max() <= 6
    inner = np.broadcast_to(((data[1] > 6) & (data[1] < 249)).all(axis=1, keepdims=True), data[1].shape)
    same = np.broadcast_to(noise[:, :1], noise.shape)                     # one draw for both channels...
    assert np.array_equal(noise[inner], same[inner])                       # ...where no clipping happened
    np.testing.assert_array_equal(RgbGesture(data_prefix=str(tmp_path / "rgb"), ann_file="train.pkl")[4]["img"],
                                  raw[4]["img"])                           # seeded: the same every run
    np.testing.assert_array_equal(va[0]["img"], resize_frames(data[0], (40, 40), "bilinear"))
    with open(tmp_path / "rgb" / "evil.pkl", "wb") as fh:
        fh.write(pickle.dumps([data, labels]).replace(b"numpy", b"posix"))
    with pytest.raises(ValueError, match=r"evil\.pkl' is not a pickle of \[data, labels\]: .*refusing"):
        RgbGesture(data_prefix=str(tmp_path / "rgb"), ann_file="evil.pkl")
    with pytest.raises(FileNotFoundError, match=r"^RgbGesture: ann_file='nope.pkl' not found .*Nothing is downloaded"):
        RgbGesture(data_prefix=str(tmp_path / "rgb"), ann_file="nope.pkl")


# ------------------------------------------------------------------------------ Jester

def write_jester(root, videos):
    """videos: {name: (n_frames, label)}; PNG frames named like Jester's 00001.jpg files."""
    from PIL import Image
    lines = ["video,class,label,frames,height,width"]
    for name, (n, label) in videos.items():
        d = root / "frames" / name
        d.mkdir(parents=True)
        names = []
        for i in range(n):
            a = np.full((30, 44, 3), (i * 7) % 256, np.uint8)
            a[..., 2] = label
            Image.fromarray(a).save(d / f"{i + 1:05d}.png")
            names.append(f"{i + 1:05d}.png")
        lines.append(f"{name},{Jester20bn.CLASSES[label]},{label},{'|'.join(names)},30,44")
    (root / "val.csv").write_text("\n".join(lines) + "\n")
    (root / "jester-v1-validation.csv").write_text(
        "".join(f"{name};{Jester20bn.CLASSES[label]}\n" for name, (n, label) in videos.items()))


JESTER_TRAIN = [
    dict(type="LoadFramesInFolder", n_frame=16, down_t=(1.0, 2.0, 0.1), dropout=0.05, random=True),
    dict(type="CropPadByRatioVideo", croppad=None, allowed_ratio=[1, 4 / 3], min_padd=.1, max_padd=.2,
         pad_mode=["constant"] * 4),
    dict(type="CutOutVideo", area=0.2, fill=None, prob=0.4),
    dict(type="RandomResizedCropVideo", center=(0, 0), size=112, scale=(0.4, 1.0), ratio=(3 / 4, 4 / 3)),
    dict(type="ToTensorTypeDict", keys=["img"], dtype="float32"),
    dict(type="ToTensor", keys=["gt_label"]),
]
JESTER_TEST = [
    dict(type="LoadFramesInFolder", n_frame=16, down_t=(1.5,), random=False),
    dict(type="CropPadByRatioVideo", croppad=None, allowed_ratio=[1, 4 / 3], min_padd=.1, max_padd=.2,
         pad_mode="constant"),
    dict(type="ResizeVideo", size=(112, -1)),
    dict(type="CenterCropVideo", crop_size=112),
    dict(type="ToTensorTypeDict", keys=["img"], dtype="float32"),
]


def test_jester_csv_frames_and_its_config_pipelines(tmp_path):
    pytest.importorskip("PIL")
    root = tmp_path / "jester"
    write_jester(root, {"101": (20, 3), "102": (18, 26), "103": (10, 5)})   # 103 is shorter than 16: skipped
    tr = build_dataset(dict(type="Jester20bn", data_prefix=str(root) + "/", ann_file="val.csv", pipeline=JESTER_TRAIN,
                            test_mode=False), where="data.train")
    te = build_dataset(dict(type="Jester20bn", data_prefix=str(root) + "/", ann_file="val.csv", pipeline=JESTER_TEST,
                            test_mode=True), where="data.test")
    assert len(tr) == 2 and te.get_gt_labels().tolist() == [3, 26]
    np.random.seed(0)
    b = batch_of(tr)
    assert b["img"].shape == (2, 16, 3, 112, 112) and b["img"].dtype == torch.float32 and b["gt_label"].tolist() == [3, 26]
    s = te[1]
    assert s["img"].shape == (16, 3, 112, 112) and int(s["gt_label"]) == 26
    # test clip: 30x44 padded by 3 per side (0.1 * 30) -> 36x50, resized to 112x155, centre crop of 112
    assert s["img"][:, 2, 56, 77].eq(26).all()                              # blue channel = the label everywhere inside
    assert s["img"][:, :, :5].eq(0).all()                                   # the constant padding rows (3 * 112/36)
    # 20BN's own list (BIDL's T=8 configs name jester-v1-*.csv): labels from the class names
    raw = Jester20bn(data_prefix=str(root), ann_file=str(root / "jester-v1-validation.csv"), pipeline=JESTER_TEST)
    assert raw.get_gt_labels().tolist() == [3, 26]
    np.testing.assert_array_equal(raw[0]["img"].numpy(), te[0]["img"].numpy())
    with pytest.raises(FileNotFoundError, match=r"^Jester20bn: data not found; expected .*nowhere/frames/<video>"):
        Jester20bn(data_prefix=str(tmp_path / "nowhere"), ann_file="val.csv")
    (root / "bad.csv").write_text("video,class,label,frames,height,width\n101,x,notanint,a|b,1,1\n")
    with pytest.raises(ValueError, match=r"bad\.csv' line 2: label 'notanint' is not an int"):
        Jester20bn(data_prefix=str(root), ann_file="bad.csv")


# ------------------------------------------------------------------------------ ES-ImageNet

def test_esimagenet_csv_and_load_numpy(tmp_path):
    rng = np.random.default_rng(3)
    (tmp_path / "ES" / "val").mkdir(parents=True)
    arrs = {}
    for k, lab in ((0, 999), (1, 5)):
        arrs[k] = rng.integers(-1, 2, (2, 8, 12, 12)).astype(np.int8)      # [C, T, H, W]
        np.savez_compressed(tmp_path / "ES" / "val" / f"s{k}.npz", arr_0=arrs[k])
    (tmp_path / "ES" / "vallabel.csv").write_text("s0.npz,999\ns1.npz,5\n")
    pipe = [dict(type="LoadNumpy"), dict(type="ToTensorTypeDict", keys=["img"], dtype="float32")]
    # BIDL writes ann_file as a path from the working directory, not under data_prefix
    ds = build_dataset(dict(type="ESImagenet", data_prefix=str(tmp_path / "ES" / "val"),
                            ann_file=str(tmp_path / "ES" / "vallabel.csv"), pipeline=pipe, test_mode=False),
                       where="data.val")
    assert ds.get_gt_labels().tolist() == [999, 5] and len(ds.CLASSES) == 1000
    np.testing.assert_array_equal(ds[0]["img"].numpy(), arrs[0].transpose(1, 0, 2, 3).astype(np.float32))
    assert batch_of(ds)["img"].shape == (2, 8, 2, 12, 12)
    (tmp_path / "ES" / "bad.csv").write_text("s0.npz\n")
    with pytest.raises(ValueError, match=r"bad\.csv' line 1: \['s0\.npz'\]: expected <file>,<label>"):
        ESImagenet(data_prefix=str(tmp_path / "ES" / "val"), ann_file=str(tmp_path / "ES" / "bad.csv"))


# ------------------------------------------------------------------------------ IMDB

def test_imdb_token_ids_with_its_three_pipelines(tmp_path):
    rng = np.random.default_rng(4)
    tokens = rng.integers(0, 1001, (5, 500)).astype(np.int32)
    labels = np.array([0, 1, 1, 0, 1], np.int64)
    np.save(tmp_path / "test.npy", tokens)
    np.save(tmp_path / "test_label.npy", labels)
    train = [dict(type="ToTensorTypeDict", keys=["img"], dtype="int32"), dict(type="ToTensor", keys=["gt_label"])]
    val = [dict(type="ToTensorTypeDict", keys=["img"], dtype="int32")]
    test = [dict(type="ToTensorTypeDict", keys=["img"], dtype="int64"), dict(type="ToOneHot", keys=["img"], param=1001)]
    kw = dict(type="imdb", data_prefix=str(tmp_path / "test.npy"), ann_file=str(tmp_path / "test_label.npy"))
    tr = build_dataset(dict(kw, pipeline=train), where="data.train")
    assert tr.get_gt_labels().tolist() == labels.tolist() and tr.CLASSES == ["neg", "pos"]
    b = batch_of(tr)
    assert b["img"].shape == (2, 500) and b["img"].dtype == torch.int32 and b["gt_label"].tolist() == [0, 1]
    assert torch.equal(build_dataset(dict(kw, pipeline=val, test_mode=True))[3]["img"], torch.from_numpy(tokens[3]))
    oh = build_dataset(dict(kw, pipeline=test, test_mode=True))[2]["img"]
    assert oh.shape == (500, 1001) and oh.argmax(1).tolist() == tokens[2].tolist()
    assert isinstance(build_dataset(dict(kw, type="Imdb")), Imdb)
    # one logit per review (FastText): class 1 where it is > 0
    logits = np.array([[-2.0], [0.5], [-0.1], [-3.0], [0.0]])
    assert tr.evaluate(logits, metric_options={"topk": (1,)}) == {"accuracy_top-1": 60.0}
    with pytest.raises(FileNotFoundError, match=r"^data: imdb: data not found; expected .*nope\.npy \(token ids"):
        build_dataset(dict(kw, data_prefix=str(tmp_path / "nope.npy")))
