"""Pipeline steps of BIDL's configs: built from BIDL's own argument names, each against a reference
computed another way (naive loops, torch.distributions for the encoders' formulas)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bidl_models.datasets import Compose
from bidl_models.datasets.pipelines import (ColorJitterVideo, CropPadByRatioVideo, CutOutVideo, LoadFramesInFolder,
                                            Population, RandomResizedCropVideo, resize_frames)

# Every pipeline step of BIDL 1.9's 33 classification configs, with its arguments as written there.
BIDL_STEPS = [
    dict(type="RandomCropVideo", size=128, padding=16),
    dict(type="RandomFlipVideo", flip_prob=0.5, direction="horizontal"),
    dict(type="ToTensorType", keys=[0], dtype="float32"),
    dict(type="ToTensorType", keys=["img"], dtype="float32"),
    dict(type="ResizeDVS", size=40),
    dict(type="RandomCropVideo", size=40, padding=4),
    dict(type="RandomCropVideoDict", size=40, padding=4),
    dict(type="ToTensorTypeDict", keys=["img"], dtype="float32"),
    dict(type="ToTensorTypeDict", keys=["img"], dtype="int32"),
    dict(type="ToTensorTypeDict", keys=["img"], dtype="int64"),
    dict(type="ToOneHot", keys=["img"], param=1001),
    dict(type="ToTensor", keys=["gt_label"]),
    dict(type="Resize", size=(28, 28)),
    dict(type="Rate", time_steps=20),
    dict(type="Temporal", time_steps=8, tau=7, linear=False),
    dict(type="Population", time_steps=10, pop_neuron=5),
    dict(type="LoadNumpy"),
    dict(type="LoadFramesInFolder", n_frame=16, down_t=(1.0, 2.0, 0.1), dropout=0.05, random=True),
    dict(type="LoadFramesInFolder", n_frame=8, down_t=(1.5,), random=False),
    dict(type="CropPadByRatioVideo", croppad=None, allowed_ratio=[1, 4 / 3], min_padd=.1, max_padd=.2,
         pad_mode=["constant"] * 4),
    dict(type="CropPadByRatioVideo", croppad=None, allowed_ratio=[1, 4 / 3], min_padd=.1, max_padd=.2,
         pad_mode="constant"),
    dict(type="CutOutVideo", area=0.2, fill=None, prob=0.4),
    dict(type="RandomResizedCropVideo", center=(0, 0), size=112, scale=(0.4, 1.0), ratio=(3 / 4, 4 / 3)),
    dict(type="ResizeVideo", size=(112, -1)),
    dict(type="CenterCropVideo", crop_size=112),
    dict(type="ColorJitterVideo", brightness=0.4, contrast=0.4, saturation=0.4),
]


@pytest.mark.parametrize("step", BIDL_STEPS, ids=lambda s: s["type"])
def test_bidl_config_steps_build_as_written(step):
    assert len(Compose([step]).steps) == 1


def clip(shape=(3, 2, 6, 8), seed=0, hi=9, dtype=np.uint8):
    return np.random.default_rng(seed).integers(0, hi, shape).astype(dtype)


# ------------------------------------------------------------------------------ flips, keys

def test_flip_prob_is_bidls_name_and_horizontal_means_left_right():
    img = clip()
    h = Compose([dict(type="RandomFlipVideo", flip_prob=1.0, direction="horizontal")])({"img": img.copy()})
    np.testing.assert_array_equal(h["img"], img[..., ::-1])                 # W reversed (BIDL 1.9 reversed H)
    v = Compose([dict(type="RandomFlipVideoDict", flip_prob=1.0, direction="vertical")])({"img": img.copy()})
    np.testing.assert_array_equal(v["img"], img[..., ::-1, :])
    np.random.seed(0)
    flips = [Compose([dict(type="RandomFlipVideo", flip_prob=0.3)])({"img": img})["flip"] for _ in range(2000)]
    assert abs(np.mean(flips) - 0.3) < 0.04
    with pytest.raises(ValueError, match="give flip_prob or flip_ratio, not both"):
        Compose([dict(type="RandomFlipVideo", flip_prob=0.5, flip_ratio=0.5)])
    with pytest.raises(ValueError, match=r"flip_prob=1\.5: expected in \[0, 1\]"):
        Compose([dict(type="RandomFlipVideo", flip_prob=1.5)])


def test_integer_keys_are_positions_of_bidls_sample_tuple():
    out = Compose([dict(type="ToTensorType", keys=[0], dtype="float32"), dict(type="ToTensor", keys=[1])])(
        {"img": clip(), "gt_label": np.int64(4)})
    assert out["img"].dtype == torch.float32 and int(out["gt_label"]) == 4
    with pytest.raises(ValueError, match=r"key 2: integer keys are positions in \(img, gt_label\)"):
        Compose([dict(type="ToTensorType", keys=[2])])


def test_random_crop_padding_forms():
    img = clip((2, 1, 4, 5))
    np.random.seed(1)
    for padding, (ph, pw) in ((1, (6, 7)), ((2, 1), (6, 9)), ((1, 0, 2, 3), (7, 8))):
        out = Compose([dict(type="RandomCropVideoDict", size=(ph, pw), padding=padding)])({"img": img})["img"]
        left, top, right, bottom = ((padding,) * 4 if isinstance(padding, int) else
                                    (padding * 2 if len(padding) == 2 else padding))
        np.testing.assert_array_equal(out, np.pad(img, [(0, 0), (0, 0), (top, bottom), (left, right)]))
    e = Compose([dict(type="RandomCropVideo", size=4, padding=1, padding_mode="edge")])({"img": img})["img"]
    assert e.shape == (2, 1, 4, 4)
    big = Compose([dict(type="RandomCropVideo", size=(6, 9), pad_if_needed=True)])({"img": img})["img"]
    np.testing.assert_array_equal(big, np.pad(img, [(0, 0), (0, 0), (1, 1), (2, 2)]))


# ------------------------------------------------------------------------------ resizing

def naive_bilinear(img2d: np.ndarray, h: int, w: int) -> np.ndarray:
    """OpenCV INTER_LINEAR's rule, pixel by pixel: src = (dst + 0.5) * scale - 0.5, clamped at the borders."""
    H, W = img2d.shape
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            sy = max((i + 0.5) * H / h - 0.5, 0.0)
            sx = max((j + 0.5) * W / w - 0.5, 0.0)
            y0, x0 = min(int(math.floor(sy)), H - 1), min(int(math.floor(sx)), W - 1)
            y1, x1 = min(y0 + 1, H - 1), min(x0 + 1, W - 1)
            fy, fx = sy - y0, sx - x0
            out[i, j] = ((1 - fy) * ((1 - fx) * img2d[y0, x0] + fx * img2d[y0, x1])
                         + fy * ((1 - fx) * img2d[y1, x0] + fx * img2d[y1, x1]))
    return out


@pytest.mark.parametrize("src,dst", [((16, 16), (5, 5)), ((12, 20), (7, 11)), ((5, 4), (9, 13))])
def test_bilinear_resize_follows_opencvs_sampling_rule(src, dst):
    img = np.random.default_rng(2).random((2, 1) + src)
    got = resize_frames(img, dst, "bilinear")
    ref = np.stack([naive_bilinear(img[t, 0], *dst) for t in range(2)])[:, None]
    np.testing.assert_allclose(got, ref, atol=1e-12)
    counts = np.full((1, 1) + src, 250, np.uint8)
    counts[..., 0, 0] = 255
    out = resize_frames(counts, dst, "bilinear")
    assert out.dtype == np.uint8 and out.min() >= 250                     # rounded and clipped, never wrapped


def test_resize_dvs_follows_bidl_default_and_short_side_rule():
    img = clip((2, 2, 128, 128), hi=6)
    out = Compose([dict(type="ResizeDVS", size=40)])({"img": img})["img"]
    assert out.shape == (2, 2, 40, 40) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, resize_frames(img, (40, 40), "bilinear"))
    wide = clip((1, 3, 60, 90))
    r = Compose([dict(type="ResizeVideo", size=(30, -1))])({"img": wide})
    assert r["img"].shape == (1, 3, 30, 45) and r["img_shape"] == (1, 3, 30, 45)
    tall = clip((1, 3, 100, 40))
    assert Compose([dict(type="ResizeVideo", size=(30, -1))])({"img": tall})["img"].shape == (1, 3, 75, 30)
    same = Compose([dict(type="ResizeVideo", size=(60, -1))])({"img": wide})["img"]
    np.testing.assert_array_equal(same, wide)
    with pytest.raises(ValueError, match="mode='sum' and interpolation='nearest' disagree"):
        Compose([dict(type="ResizeDVS", size=4, mode="sum", interpolation="nearest")])


def test_center_crop_video():
    img = clip((2, 3, 9, 12))
    out = Compose([dict(type="CenterCropVideo", crop_size=(4, 6))])({"img": img})["img"]
    np.testing.assert_array_equal(out, img[..., round(2.5):round(2.5) + 4, 3:9])   # Python rounds 2.5 -> 2
    with pytest.raises(ValueError, match=r"frames are 9x12, smaller than the crop 10x10"):
        Compose([dict(type="CenterCropVideo", crop_size=10)])({"img": img})


def test_random_resized_crop_video_is_a_resized_window():
    img = clip((3, 3, 30, 40), hi=255).astype(np.float64)
    step = RandomResizedCropVideo(size=(12, 12), scale=(0.3, 0.6), ratio=(0.75, 1.33))
    np.random.seed(3)
    for _ in range(20):
        state = np.random.get_state()
        top, left, h, w = step.window(30, 40)
        assert 0 <= top and top + h <= 30 and 0 <= left and left + w <= 40
        assert 0.3 * 1200 * 0.8 <= h * w <= 0.6 * 1200 * 1.2
        np.random.set_state(state)
        out = step({"img": img})["img"]
        np.testing.assert_allclose(out, resize_frames(img[..., top:top + h, left:left + w], (12, 12), "bilinear"))
    centred = RandomResizedCropVideo(size=8, center=(1, 1), scale=(0.5, 0.5), ratio=(1, 1))
    top, left, h, w = centred.window(30, 40)
    assert (top, left) == ((30 - h) // 2, (40 - w) // 2)
    fallback = RandomResizedCropVideo(size=8, scale=(2.0, 3.0), ratio=(1.0, 1.0), max_attempts=3)
    assert fallback.window(30, 40) == (0, 5, 30, 30)                        # centre crop closest to the ratio


# ------------------------------------------------------------------------------ crop/pad by ratio, cut-out

def test_crop_pad_by_ratio_plans():
    s = CropPadByRatioVideo(None, [1, 4 / 3], min_padd=0.1, max_padd=0.2, pad_mode="constant")
    assert s.plan(100, 120) == ((0, 0, 0, 0), (10, 10, 10, 10))           # ratio 1.2 in range: min_padd
    assert s.plan(100, 80) == ((0, 0, 0, 0), (10, 0, 10, 0))               # narrow: (100*1 - 80)/2 = 10 per side
    assert s.plan(100, 200) == ((0, 0, 0, 0), (0, 20, 0, 20))              # wide: (200*3/4 - 100)/2 = 25, cap 20
    img = clip((2, 3, 100, 80))
    out = s({"img": img})["img"]
    assert out.shape == (2, 3, 100, 100) and not out[..., :10].any() and not out[..., 90:].any()
    np.testing.assert_array_equal(out[..., 10:90], img)
    # croppad applies to frames out of range: crop 10% of the short side left and right -> 100x100
    c = CropPadByRatioVideo([-0.1, 0.0, -0.1, 0.0], [1, 1], max_padd=1.0)
    assert c.plan(100, 120) == ((10, 0, 10, 0), (0, 0, 0, 0)) and c.plan(100, 100) == ((0,) * 4, (0,) * 4)
    c2 = CropPadByRatioVideo([-0.1, 0.1, -0.1, 0.0], [1, 1], max_padd=1.0)
    assert c2.plan(100, 120) == ((10, 0, 10, 0), (0, 10, 0, 0))            # in range after the crop: croppad's pads
    assert c2({"img": clip((1, 1, 100, 120))})["img"].shape == (1, 1, 110, 100)
    c3 = CropPadByRatioVideo([-0.1, 0.0, 0.0, 0.0], [0.5, 0.8], max_padd=1.0)
    assert c3.plan(100, 100) == ((10, 0, 0, 0), (0, 6, 0, 6))              # 90 wide: round(12.5) = 12 -> 6 + 6
    # a list of modes: one of them per sample, never a mode outside the list
    m = CropPadByRatioVideo(None, [1, 1], min_padd=0.2, max_padd=0.2, pad_mode=["edge", "reflect"])
    seen = set()
    np.random.seed(4)
    img2 = clip((1, 1, 10, 10), hi=200)
    for _ in range(20):
        out = m({"img": img2})["img"]
        seen.add("edge" if np.array_equal(out, np.pad(img2, [(0, 0), (0, 0), (2, 2), (2, 2)], "edge")) else
                 "reflect" if np.array_equal(out, np.pad(img2, [(0, 0), (0, 0), (2, 2), (2, 2)], "reflect")) else "?")
    assert seen == {"edge", "reflect"}
    with pytest.raises(ValueError, match="pad_mode=.*'empty'"):
        CropPadByRatioVideo(None, [1, 1], pad_mode=["empty"])


def test_cut_out_video():
    img = clip((6, 3, 20, 30), hi=200)
    np.random.seed(5)
    out = CutOutVideo(area=0.2, fill=[250, 251, 252], prob=1.0)({"img": img})["img"]
    diff = np.any(out != img, axis=1)                                      # [T, H, W]
    assert np.array_equal(diff, np.broadcast_to(diff[0], diff.shape))      # the same rectangle in every frame
    ys, xs = np.nonzero(out[0, 0] == 250)
    h2, w2 = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    assert len(ys) == h2 * w2 and abs(h2 * w2 - 0.2 * 600) <= h2 + w2
    assert (out[:, :, ys.min():ys.max() + 1, xs.min():xs.max() + 1] == np.array([250, 251, 252])[None, :, None, None]).all()
    assert img.max() < 200 and not (img == 255).any()                      # input untouched (copy)
    np.testing.assert_array_equal(CutOutVideo(area=0.2, prob=0.0)({"img": img})["img"], img)
    np.random.seed(6)
    rnd = CutOutVideo(area=0.3, fill=None, prob=0.5)({"img": img})["img"]
    changed = np.any(rnd != img, axis=(1, 2, 3))
    assert 0 < changed.sum() < 6 and rnd.min() >= img.min() and rnd.max() <= img.max()


def test_color_jitter_video():
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, (2, 3, 5, 6)).astype(np.uint8)
    x = img.astype(np.float64)
    luma = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    b = ColorJitterVideo.apply(img, "brightness", 1.5)
    np.testing.assert_array_equal(b, np.clip(np.floor(x * 1.5 + 0.5), 0, 255).astype(np.uint8))
    assert b.max() == 255 and (b[img > 170] == 255).all()                 # saturates (BIDL wrapped)
    c = ColorJitterVideo.apply(img, "contrast", 0.0)
    assert np.all(np.abs(c.astype(int) - luma.mean()) <= 0.5 + 1e-4)     # all pixels -> the mean luma
    s = ColorJitterVideo.apply(img, "saturation", 0.0)
    assert np.all(np.abs(s.astype(float) - luma) <= 0.5 + 1e-4)          # grey image
    np.testing.assert_array_equal(ColorJitterVideo(0, 0, 0)({"img": img})["img"], img)
    with pytest.raises(ValueError, match=r"expected uint8 RGB frames"):
        ColorJitterVideo(0.2, 0.2, 0.2)({"img": img[:, :2]})


# ------------------------------------------------------------------------------ spike encoders

def test_rate_is_seeded_per_sample_and_has_the_right_rate():
    x = np.linspace(0, 1, 28 * 28, dtype=np.float32).reshape(28, 28)
    step = Compose([dict(type="Rate", time_steps=400, seed=11)])
    a = step({"img": x, "sample_idx": 3})["img"]
    assert a.shape == (400, 1, 28, 28) and a.dtype == np.float32 and set(np.unique(a)) == {0.0, 1.0}
    np.testing.assert_array_equal(a, step({"img": x, "sample_idx": 3})["img"])
    assert not np.array_equal(a, step({"img": x, "sample_idx": 4})["img"])
    assert np.abs(a.mean(0)[0] - x).max() < 0.1 and (a[:, 0, 0, 0] == 0).all() and (a[:, 0, -1, -1] == 1).all()
    g = Compose([dict(type="Rate", time_steps=200, gain=0.5, offset=0.25)])
    np.random.seed(0)
    b = g({"img": x})["img"]
    np.random.seed(0)
    np.testing.assert_array_equal(b, g({"img": x})["img"])               # unseeded: follows np.random.seed
    assert abs(b.mean() - float(np.clip(x * 0.5 + 0.25, 0, 1).mean())) < 0.01


def bidl_latency(x, T, threshold=0.01, tau=1.0, first=0.0, normalize=False, linear=False, clip=False, eps=1e-7,
                 on=1.0, off=0.0):
    """The latency code written with torch ops (the formulas of BIDL's / snntorch's Temporal)."""
    d = torch.as_tensor(x, dtype=torch.float32)
    if linear:
        tau_ = T - 1 - first if normalize else tau
        st = torch.clamp_max(-tau_ * (d - 1), -tau_ * (threshold - 1)) + first
    else:
        dc = torch.clamp(d, threshold + eps)
        st = tau * torch.log(dc / (dc - threshold))
        if first > 0:
            st = st + first
        if normalize:
            st = (st - first) * (T - first - 1) / torch.max(st - first) + first
    spikes = torch.zeros((T,) + tuple(st.shape))
    rm = torch.round(st).long() > T - 1
    spikes = spikes.scatter(0, torch.round(torch.clamp_max(st, T - 1)).long().unsqueeze(0), 1) * ~rm
    if clip:
        spikes = spikes * ~(d < threshold)
    return torch.clamp(spikes * on, off).numpy()


@pytest.mark.parametrize("kw", [dict(T=8, tau=7), dict(T=10, tau=2, first=1.0), dict(T=12, normalize=True),
                                dict(T=9, linear=True, tau=6), dict(T=9, linear=True, normalize=True, first=2.0),
                                dict(T=8, tau=7, clip=True, threshold=0.2, on=2.0, off=0.5)])
def test_temporal_matches_the_latency_formula(kw):
    x = np.random.default_rng(8).random((2, 9, 9)).astype(np.float32)
    x[0, 0, :4] = [0.0, 1.0, 0.01, 0.005]
    T = kw.pop("T")
    names = dict(tau="tau", first="first_spike_time", normalize="normalize", linear="linear", clip="clip",
                 threshold="threshold", on="on_target", off="off_target")
    step = Compose([dict(type="Temporal", time_steps=T, **{names[k]: v for k, v in kw.items()})])
    got = step({"img": x})["img"]
    ref = bidl_latency(x, T, **kw)
    assert got.shape == (T, 2, 9, 9)
    np.testing.assert_array_equal(got, ref)
    with pytest.raises(ValueError, match=r"values in \[0.0, 2.0\]; expected pixel intensities in \[0, 1\]"):
        step({"img": np.array([[0.0, 2.0]], np.float32)})


def bidl_population(x, T, n, wrap):
    """Population code with torch.distributions (BIDL's formula), for one-channel images."""
    from torch.distributions import Normal
    img = torch.as_tensor(x, dtype=torch.float32)[None]
    sigma = 1 / 1.5 / (n - 2)
    resp = [Normal((2 * i - 3) / 2 / (n - 2), sigma).log_prob(img).exp() for i in range(n)]
    steps = torch.stack([((1.0 - r / r.max()) * T).to(torch.int64) for r in resp]).squeeze(1)  # [n, H, W]
    if wrap:
        steps[steps > T - 1] = 0
        return torch.nn.functional.one_hot(steps, T).permute(3, 0, 1, 2).float().numpy()
    keep = steps <= T - 1
    oh = torch.nn.functional.one_hot(steps.clamp_max(T - 1), T) * keep[..., None]
    return oh.permute(3, 0, 1, 2).float().numpy()


def test_population_matches_gaussian_receptive_fields():
    x = np.random.default_rng(9).random((12, 12)).astype(np.float32)
    x[0, :3] = [0.0, 1.0, 0.5]
    got = Compose([dict(type="Population", time_steps=10, pop_neuron=5)])({"img": x})["img"]
    assert got.shape == (10, 5, 12, 12) and got.dtype == np.float32
    np.testing.assert_array_equal(got, bidl_population(x, 10, 5, wrap=False))
    wrap = Population(10, 5, overflow="wrap")({"img": x})["img"]
    np.testing.assert_array_equal(wrap, bidl_population(x, 10, 5, wrap=True))
    # with BIDL's rule every neuron fires once; dropping the overflow removes exactly those spikes
    assert (wrap.sum(0) == 1).all() and got.sum() < wrap.sum()
    assert np.array_equal(got[1:], wrap[1:]) and (got[0] <= wrap[0]).all()
    # each neuron fires first at the pixel nearest its centre (2i - 3) / 6
    for i in range(5):
        assert got[0, i].flat[int(np.argmin(np.abs(x - (2 * i - 3) / 6)))] == 1
    two = Population(6, 4)({"img": np.stack([x, 1 - x])})["img"]
    assert two.shape == (6, 8, 12, 12)
    np.testing.assert_array_equal(two[:, 4:], Population(6, 4)({"img": 1 - x})["img"])  # channel c*n + i
    with pytest.raises(ValueError, match=r"pop_neuron=2: expected an int >= 3"):
        Population(10, 2)


# ------------------------------------------------------------------------------ loading, one-hot

def test_to_one_hot_tokens():
    out = Compose([dict(type="ToTensorTypeDict", keys=["img"], dtype="int64"), dict(type="ToOneHot", keys=["img"],
                                                                                    param=7)])(
        {"img": np.array([3, 0, 6])})["img"]
    assert out.shape == (3, 7) and out.dtype == torch.float32
    assert out.argmax(1).tolist() == [3, 0, 6] and out.sum().item() == 3
    assert Compose([dict(type="ToOneHot", keys=["img"], param=4)])({"img": np.int64(2)})["img"].tolist() == [0, 0, 1, 0]
    with pytest.raises(ValueError, match=r"ids in \[0, 9\]; expected 0\.\.6"):
        Compose([dict(type="ToOneHot", keys=["img"], param=7)])({"img": np.array([0, 9])})


def write_video(folder, n, hw=(6, 8)):
    """PNG frames whose red channel is the frame index (lossless, so decoding is checkable)."""
    from PIL import Image
    folder.mkdir(parents=True)
    names = []
    for i in range(n):
        a = np.zeros(hw + (3,), np.uint8)
        a[..., 0], a[..., 1] = i, 100
        Image.fromarray(a).save(folder / f"{i:05d}.png")
        names.append(f"{i:05d}.png")
    return names


def test_load_frames_in_folder(tmp_path):
    pytest.importorskip("PIL")
    names = write_video(tmp_path / "v", 20)
    test = LoadFramesInFolder(n_frame=8, down_t=(1.5,), random=False)
    out = test({"video": str(tmp_path / "v"), "frames": names, "gt_label": np.int64(1)})
    # dt = min(1.5, 20/8); round(i*1.5) = 0,2,3,4,6,8,9,10 (half to even); centred start (20 - 11) // 2 = 4
    assert out["frame_inds"].tolist() == [4, 6, 7, 8, 10, 12, 13, 14] and "frames" not in out
    assert out["img"].shape == (8, 3, 6, 8) and out["img"].dtype == np.uint8
    assert out["img"][:, 0, 0, 0].tolist() == [4, 6, 7, 8, 10, 12, 13, 14] and (out["img"][:, 1] == 100).all()
    short = test({"video": str(tmp_path / "v"), "frames": names[:5]})     # repeated to 8, dt trimmed to 8/8
    assert short["img"][:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    train = LoadFramesInFolder(n_frame=6, down_t=(1.0, 3.0), dropout=0.5, random=True)
    np.random.seed(10)
    for _ in range(10):
        o = train({"video": str(tmp_path / "v"), "frames": names})
        idx = o["frame_inds"]
        strides = np.diff(idx)
        assert idx.min() >= 0 and idx.max() < 20 and strides.min() >= 1 and strides.max() <= 4
        kept = o["img"][:, 1, 0, 0] == 100
        assert (o["img"][~kept] == 0).all() and (o["img"][kept, 0, 0, 0] == idx[kept]).all()
    with pytest.raises(ValueError, match=r"down_t=\(1\.5,\) with random=True"):
        LoadFramesInFolder(n_frame=8, down_t=(1.5,), random=True)


def test_load_numpy(tmp_path):
    arr = np.arange(2 * 3 * 4 * 5, dtype=np.int8).reshape(2, 3, 4, 5)       # [C, T, H, W]
    np.savez_compressed(tmp_path / "s.npz", arr_0=arr)
    out = Compose([dict(type="LoadNumpy")])({"img_prefix": str(tmp_path), "img_info": "s.npz"})
    np.testing.assert_array_equal(out["img"], arr.transpose(1, 0, 2, 3))
    with pytest.raises(FileNotFoundError, match=r"LoadNumpy: '.*nope\.npz': no such file"):
        Compose([dict(type="LoadNumpy")])({"img_prefix": str(tmp_path), "img_info": "nope.npz"})
