"""Video / event-frame steps on ``[T, C, H, W]`` numpy arrays, with BIDL's names and arguments.

Every step applies the same geometry to all T frames (one random draw per sample), works on every key
in ``keys`` (default ``['img']``) and returns a new array (inputs are never modified in place). Random
draws come from numpy's global RNG (seeded by ``bidl_models.train``). Where BIDL 1.9 has a defect the
step documents what it does instead.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np

from ...registry import PIPELINES
from .compose import dict_keys, hw, resize_frames, video

PAD_MODES = ("constant", "edge", "linear_ramp", "maximum", "mean", "median", "minimum", "reflect",
             "symmetric", "wrap")
CROP_PAD_MODES = ("constant", "edge", "reflect", "symmetric")


def _padding4(padding: Any, step: str) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) from an int, (left/right, top/bottom) or (left, top, right, bottom)."""
    if padding is None:
        return (0, 0, 0, 0)
    if isinstance(padding, (int, np.integer)):
        p = (int(padding),) * 4
    elif isinstance(padding, (list, tuple)) and len(padding) == 2:
        p = (int(padding[0]), int(padding[1])) * 2
    elif isinstance(padding, (list, tuple)) and len(padding) == 4:
        p = tuple(int(v) for v in padding)
    else:
        raise ValueError(f"{step}: padding={padding!r}: expected an int, (left/right, top/bottom) or "
                         "(left, top, right, bottom)")
    if min(p) < 0:
        raise ValueError(f"{step}: padding={padding!r}: expected >= 0")
    return p  # type: ignore[return-value]


def _pad_hw(img: np.ndarray, left: int, top: int, right: int, bottom: int, mode: str, value: float = 0) -> np.ndarray:
    if not (left or top or right or bottom):
        return img
    pad = [(0, 0)] * (img.ndim - 2) + [(top, bottom), (left, right)]
    if mode == "constant":
        return np.pad(img, pad, mode="constant", constant_values=value)
    return np.pad(img, pad, mode=mode)


def _short_side_size(size: Any, step: str) -> tuple[int, int]:
    """BIDL's resize size: an int, (h, w), or (s, -1) = short side to s (returned as (s, -1))."""
    if isinstance(size, (list, tuple)) and len(size) == 2 and size[1] == -1:
        if not isinstance(size[0], (int, np.integer)) or size[0] <= 0:
            raise ValueError(f"{step}: size={size!r}: expected (short side > 0, -1)")
        return int(size[0]), -1
    return hw(size, step)


def _target_size(size: tuple[int, int], H: int, W: int) -> tuple[int, int]:
    if size[1] != -1:
        return size
    s = size[0]
    if W <= H:
        return (int(s * H / W), s) if W != s else (H, W)
    return (s, int(s * W / H)) if H != s else (H, W)


@PIPELINES.register("RandomCropVideo", "RandomCropVideoDict")
class RandomCropVideo:
    """Pad H and W by ``padding`` (int, (left/right, top/bottom) or (left, top, right, bottom)) with
    ``padding_mode`` ('constant' with ``pad_val``, 'edge', 'reflect', 'symmetric'), then crop a random
    ``size`` window, the same for all frames. ``pad_if_needed`` also pads a frame still smaller than
    ``size`` (split evenly, the extra pixel at the bottom/right). ``RandomCropVideoDict`` is the same
    step (BIDL's dict-sample name)."""

    def __init__(self, size: int | Sequence[int], padding: Any = None, pad_if_needed: bool = False,
                 pad_val: float = 0, padding_mode: str = "constant", keys: Sequence[Any] = ("img",)):
        self.size = hw(size, "RandomCropVideo")
        self.padding = _padding4(padding, "RandomCropVideo")
        if padding_mode not in CROP_PAD_MODES:
            raise ValueError(f"RandomCropVideo: padding_mode={padding_mode!r}: expected one of {list(CROP_PAD_MODES)}")
        self.pad_if_needed, self.pad_val, self.padding_mode = bool(pad_if_needed), pad_val, padding_mode
        self.keys = dict_keys(keys, "RandomCropVideo")

    def __call__(self, results: dict) -> dict:
        top = left = None
        for k in self.keys:
            img = _pad_hw(video(results, k, "RandomCropVideo"), *self.padding, self.padding_mode, self.pad_val)
            h, w = self.size
            H, W = img.shape[-2:]
            if self.pad_if_needed and (H < h or W < w):
                dh, dw = max(h - H, 0), max(w - W, 0)
                img = _pad_hw(img, dw // 2, dh // 2, dw - dw // 2, dh - dh // 2, self.padding_mode, self.pad_val)
                H, W = img.shape[-2:]
            if h > H or w > W:
                raise ValueError(f"RandomCropVideo: crop {h}x{w} larger than the padded frame {H}x{W} of {k!r}")
            if top is None:
                top, left = np.random.randint(0, H - h + 1), np.random.randint(0, W - w + 1)
            results[k] = np.ascontiguousarray(img[..., top:top + h, left:left + w])
        return results

    def __repr__(self) -> str:
        return f"RandomCropVideo(size={self.size}, padding={self.padding})"


@PIPELINES.register("RandomFlipVideo", "RandomFlipVideoDict")
class RandomFlipVideo:
    """With probability ``flip_prob`` (BIDL's name; ``flip_ratio`` is accepted too) flip every frame:
    'horizontal' reverses W (left-right), 'vertical' reverses H (up-down).

    BIDL 1.9's ``RandomFlipVideo('horizontal')`` reversed axis 2 of ``[T, C, H, W]``, i.e. H: its
    'horizontal' was an up-down flip (a defect). Here the words mean what they say; to reproduce
    BIDL's training augmentation exactly, write ``direction='vertical'``. Sets ``flip`` and
    ``flip_direction`` in the sample."""

    AXES = {"horizontal": -1, "vertical": -2}

    def __init__(self, flip_prob: Optional[float] = None, direction: str = "horizontal",
                 keys: Sequence[Any] = ("img",), flip_ratio: Optional[float] = None):
        if flip_prob is not None and flip_ratio is not None:
            raise ValueError("RandomFlipVideo: give flip_prob or flip_ratio, not both")
        p = 0.5 if flip_prob is None and flip_ratio is None else (flip_prob if flip_prob is not None else flip_ratio)
        name = "flip_prob" if flip_ratio is None else "flip_ratio"
        if direction not in self.AXES:
            raise ValueError(f"RandomFlipVideo: direction={direction!r}: expected one of {list(self.AXES)}")
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"RandomFlipVideo: {name}={p!r}: expected in [0, 1]")
        self.flip_prob, self.direction, self.keys = float(p), direction, dict_keys(keys, "RandomFlipVideo")

    def __call__(self, results: dict) -> dict:
        flip = np.random.rand() < self.flip_prob
        results["flip"], results["flip_direction"] = bool(flip), self.direction
        if flip:
            for k in self.keys:
                img = video(results, k, "RandomFlipVideo")
                results[k] = np.ascontiguousarray(np.flip(img, axis=self.AXES[self.direction]))
        return results

    def __repr__(self) -> str:
        return f"RandomFlipVideo(flip_prob={self.flip_prob}, direction={self.direction!r})"


@PIPELINES.register()
class ResizeVideo:
    """Resize every frame to ``size``: an int (square), ``(h, w)``, or ``(s, -1)`` = short side to ``s``
    keeping the aspect ratio (the long side ``int(s * long / short)``, BIDL's rule).
    ``interpolation``: 'bilinear' (BIDL's default, OpenCV's sampling rule), 'nearest' or 'area';
    ``backend`` is accepted for BIDL's configs and ignored (one implementation)."""

    MODES = ("bilinear", "nearest", "area")

    def __init__(self, size: Any, interpolation: str = "bilinear", backend: Optional[str] = None,
                 keys: Sequence[Any] = ("img",)):
        name = type(self).__name__
        self.size = _short_side_size(size, name)
        if interpolation not in self.MODES:
            raise ValueError(f"{name}: interpolation={interpolation!r}: expected one of {list(self.MODES)}")
        if backend not in (None, "cv2", "pillow"):
            raise ValueError(f"{name}: backend={backend!r}: expected 'cv2' or 'pillow'")
        self.interpolation, self.keys = interpolation, dict_keys(keys, name)

    def resize(self, img: np.ndarray) -> np.ndarray:
        return resize_frames(img, _target_size(self.size, *img.shape[-2:]), self.interpolation)

    def __call__(self, results: dict) -> dict:
        for k in self.keys:
            img = self.resize(video(results, k, type(self).__name__))
            results[k] = img
            results["img_shape"] = tuple(img.shape)
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size={self.size}, interpolation={self.interpolation!r})"


@PIPELINES.register()
class ResizeDVS(ResizeVideo):
    """:class:`ResizeVideo` for event frames, plus ``mode='sum'``: an integer downscale that adds up the
    event counts of each block (no event lost). ``mode`` and BIDL's ``interpolation`` name the same
    choice ('bilinear' default, as BIDL; 'nearest': pixel centres; 'area'; 'sum'). Integer counts are
    rounded and clipped to their dtype, never wrapped."""

    MODES = ("bilinear", "nearest", "area", "sum")

    def __init__(self, size: Any, interpolation: Optional[str] = None, backend: Optional[str] = None,
                 mode: Optional[str] = None, keys: Sequence[Any] = ("img",)):
        if mode is not None and interpolation is not None and mode != interpolation:
            raise ValueError(f"ResizeDVS: mode={mode!r} and interpolation={interpolation!r} disagree; give one")
        super().__init__(size, mode or interpolation or "bilinear", backend, keys)
        if self.interpolation == "sum" and self.size[1] == -1:
            raise ValueError("ResizeDVS(mode='sum'): size=(s, -1) is not an integer downscale; give (h, w)")

    @property
    def mode(self) -> str:
        return self.interpolation

    def resize(self, img: np.ndarray) -> np.ndarray:
        if self.interpolation != "sum":
            return super().resize(img)
        h, w = self.size
        H, W = img.shape[-2:]
        if H % h or W % w:
            raise ValueError(f"ResizeDVS(mode='sum'): {H}x{W} -> {h}x{w} is not an integer downscale")
        fh, fw = H // h, W // w
        out = img.reshape(img.shape[:-2] + (h, fh, w, fw)).sum(axis=(-3, -1), dtype=np.int64)
        if np.issubdtype(img.dtype, np.floating):
            return out.astype(img.dtype)
        return np.minimum(out, np.iinfo(img.dtype).max).astype(img.dtype)


@PIPELINES.register()
class CenterCropVideo:
    """Crop the centre ``crop_size`` (int or (h, w)) of every frame: top ``round((H - h) / 2)`` (Python's
    round, as BIDL). A frame smaller than the crop raises ValueError (BIDL asserted the result is
    112x112 or 224x224). ``efficientnet_style`` is not supported (no config uses it)."""

    def __init__(self, crop_size: int | Sequence[int], efficientnet_style: bool = False, crop_padding: int = 32,
                 interpolation: str = "bilinear", backend: Optional[str] = None, keys: Sequence[Any] = ("img",)):
        if efficientnet_style:
            raise ValueError("CenterCropVideo: efficientnet_style=True is not supported")
        self.crop_size = hw(crop_size, "CenterCropVideo")
        self.keys = dict_keys(keys, "CenterCropVideo")

    def __call__(self, results: dict) -> dict:
        h, w = self.crop_size
        for k in self.keys:
            img = video(results, k, "CenterCropVideo")
            H, W = img.shape[-2:]
            if H < h or W < w:
                raise ValueError(f"CenterCropVideo: results[{k!r}] frames are {H}x{W}, smaller than the crop {h}x{w}")
            y, x = max(0, int(round((H - h) / 2.0))), max(0, int(round((W - w) / 2.0)))
            results[k] = np.ascontiguousarray(img[..., y:y + h, x:x + w])
            results["img_shape"] = tuple(results[k].shape)
        return results


@PIPELINES.register()
class CropPadByRatioVideo:
    """Bring the width/height ratio of the frames into ``allowed_ratio`` = (lo, hi) by padding.

    * ``croppad=None``: a frame already in range is padded by ``round(min_padd * min(H, W))`` on all four
      sides; a too-narrow one (W/H < lo) gets ``round((H * lo - W) / 2)`` left and right; a too-wide one
      ``round((W / hi - H) / 2)`` top and bottom.
    * ``croppad=(left, top, right, bottom)``, fractions of ``min(H, W)``: negative values crop that
      side, positive ones pad it; if the cropped frame's ratio is out of range, the padding of the
      sides being padded is rescaled to reach the range (split evenly when those sides have none).

    Every pad is then capped at ``max_padd * min(H, W)`` (of the input frame). ``pad_mode``: a numpy
    pad mode, or a list of modes to pick one from uniformly per sample. (BIDL 1.9 picked from the list
    *plus* all numpy modes, 'empty' -- uninitialised memory -- included; that defect is not kept.)
    """

    def __init__(self, croppad: Optional[Sequence[float]], allowed_ratio: Sequence[float], min_padd: float = 0.0,
                 max_padd: float = 0.0, pad_mode: str | Sequence[str] = "wrap", keys: Sequence[Any] = ("img",)):
        if croppad is not None and len(croppad) != 4:
            raise ValueError(f"CropPadByRatioVideo: croppad={croppad!r}: expected None or (left, top, right, bottom)")
        if len(allowed_ratio) != 2 or not 0 < float(allowed_ratio[0]) <= float(allowed_ratio[1]):
            raise ValueError(f"CropPadByRatioVideo: allowed_ratio={allowed_ratio!r}: expected (lo, hi), 0 < lo <= hi")
        if not 0 <= float(min_padd) <= float(max_padd):
            raise ValueError(f"CropPadByRatioVideo: min_padd={min_padd!r}, max_padd={max_padd!r}: expected "
                             "0 <= min_padd <= max_padd")
        modes = [pad_mode] if isinstance(pad_mode, str) else list(pad_mode)
        bad = [m for m in modes if m not in PAD_MODES]
        if bad or not modes:
            raise ValueError(f"CropPadByRatioVideo: pad_mode={pad_mode!r}: expected numpy pad modes from {list(PAD_MODES)}")
        self.croppad = None if croppad is None else tuple(float(c) for c in croppad)
        self.ratio = (float(allowed_ratio[0]), float(allowed_ratio[1]))
        self.min_padd, self.max_padd, self.modes = float(min_padd), float(max_padd), modes
        self.keys = dict_keys(keys, "CropPadByRatioVideo")

    def plan(self, H: int, W: int) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int]]:
        """((crop left, top, right, bottom), (pad left, top, right, bottom)) for an H x W frame."""
        lo, hi = self.ratio
        side = min(H, W)
        crop = (0, 0, 0, 0)
        ratio = W / H
        if lo <= ratio <= hi:
            pad = [round(self.min_padd * side)] * 4
        elif self.croppad is None:
            if ratio < lo:
                d = round((H * lo - W) / 2)
                pad = [d, 0, d, 0]
            else:
                d = round((W / hi - H) / 2)
                pad = [0, d, 0, d]
        else:
            amounts = [c * side for c in self.croppad]
            crop = tuple(round(-min(a, 0.0)) for a in amounts)  # type: ignore[assignment]
            pad = [round(max(a, 0.0)) for a in amounts]
            h2, w2 = H - crop[1] - crop[3], W - crop[0] - crop[2]
            if h2 <= 0 or w2 <= 0:
                raise ValueError(f"CropPadByRatioVideo: croppad={self.croppad} crops a {H}x{W} frame to nothing")
            r2 = w2 / h2
            if r2 < lo:
                need = round(h2 * lo - w2)
                pad[0], pad[2] = self._share(need, pad[0], pad[2])
            elif r2 > hi:
                need = round(w2 / hi - h2)
                pad[1], pad[3] = self._share(need, pad[1], pad[3])
        cap = self.max_padd * side
        return crop, tuple(int(round(min(p, cap))) for p in pad)  # type: ignore[return-value]

    @staticmethod
    def _share(need: int, a: int, b: int) -> tuple[int, int]:
        if a + b == 0:
            return need // 2, need - need // 2
        return round(need * a / (a + b)), round(need * b / (a + b))

    def __call__(self, results: dict) -> dict:
        mode = self.modes[0] if len(self.modes) == 1 else self.modes[np.random.randint(len(self.modes))]
        for k in self.keys:
            img = video(results, k, "CropPadByRatioVideo")
            H, W = img.shape[-2:]
            (cl, ct, cr, cb), pad = self.plan(H, W)
            img = img[..., ct:H - cb, cl:W - cr]
            results[k] = np.ascontiguousarray(_pad_hw(img, *pad, mode))
        return results


@PIPELINES.register()
class CutOutVideo:
    """With probability ``prob`` per frame, fill one rectangle of ``area`` x H x W pixels (the same
    rectangle in every chosen frame) with ``fill``: an int (all channels), one value per channel, or
    ``None`` = a random value per channel between the clip's min and max. The rectangle's aspect ratio
    is log-uniform within the bounds that keep it inside the frame (BIDL's rule); its position is
    uniform over all positions inside the frame."""

    def __init__(self, area: float, fill: Any = 0, prob: float = 0.5, keys: Sequence[Any] = ("img",)):
        if not 0 < float(area) < 1:
            raise ValueError(f"CutOutVideo: area={area!r}: expected a fraction in (0, 1)")
        if not 0 <= float(prob) <= 1:
            raise ValueError(f"CutOutVideo: prob={prob!r}: expected in [0, 1]")
        if fill is not None and not isinstance(fill, (int, float, list, tuple)):
            raise ValueError(f"CutOutVideo: fill={fill!r}: expected None, a number or one number per channel")
        self.area, self.fill, self.prob = float(area), fill, float(prob)
        self.keys = dict_keys(keys, "CutOutVideo")

    def rectangle(self, H: int, W: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) of a random rectangle."""
        area = self.area * H * W
        r_lo = area / min(area, H - 1) ** 2
        r_hi = area / max(area / W, 2) ** 2
        r = math.exp(np.random.uniform(math.log(r_lo), math.log(r_hi))) if r_hi > r_lo else r_lo
        h2 = max(1, min(H, int(math.sqrt(area / r))))
        w2 = max(1, min(W, int(math.sqrt(area * r))))
        return np.random.randint(0, H - h2 + 1), np.random.randint(0, W - w2 + 1), h2, w2

    def __call__(self, results: dict) -> dict:
        for k in self.keys:
            img = video(results, k, "CutOutVideo", ndim=4)
            T, C, H, W = img.shape
            chosen = np.random.rand(T) < self.prob
            if not chosen.any():
                continue
            top, left, h2, w2 = self.rectangle(H, W)
            if self.fill is None:
                fill = np.random.randint(int(img.min()), int(img.max()) + 1, C) if \
                    np.issubdtype(img.dtype, np.integer) else np.random.uniform(img.min(), img.max(), C)
            else:
                fill = np.broadcast_to(np.asarray(self.fill), (C,)) if np.ndim(self.fill) == 0 or \
                    len(self.fill) == C else None
                if fill is None:
                    raise ValueError(f"CutOutVideo: fill={self.fill!r} has {len(self.fill)} values for {C} channels")
            out = img.copy()
            out[chosen, :, top:top + h2, left:left + w2] = np.asarray(fill, img.dtype)[None, :, None, None]
            results[k] = out
        return results


@PIPELINES.register()
class RandomResizedCropVideo:
    """Crop a random area fraction in ``scale`` with a log-uniform aspect ratio in ``ratio`` (up to
    ``max_attempts`` draws, then the centre crop closest to ``ratio``), the same for all frames, and
    resize it to ``size`` (bilinear). ``center=(cy, cx)``: a true entry centres the crop on that axis
    instead of placing it at random (BIDL's extension). ``efficientnet_style`` is not supported."""

    def __init__(self, size: int | Sequence[int], center: Sequence[Any] = (0, 0), scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3.0 / 4.0, 4.0 / 3.0), max_attempts: int = 10,
                 efficientnet_style: bool = False, min_covered: float = 0.1, crop_padding: int = 32,
                 interpolation: str = "bilinear", backend: Optional[str] = None, keys: Sequence[Any] = ("img",)):
        if efficientnet_style:
            raise ValueError("RandomResizedCropVideo: efficientnet_style=True is not supported")
        if not 0 < float(scale[0]) <= float(scale[1]) or not 0 < float(ratio[0]) <= float(ratio[1]):
            raise ValueError(f"RandomResizedCropVideo: scale={scale!r}, ratio={ratio!r}: expected (min, max) > 0")
        if len(center) != 2:
            raise ValueError(f"RandomResizedCropVideo: center={center!r}: expected (centre rows?, centre cols?)")
        if interpolation not in ResizeVideo.MODES:
            raise ValueError(f"RandomResizedCropVideo: interpolation={interpolation!r}: expected one of "
                             f"{list(ResizeVideo.MODES)}")
        self.size = hw(size, "RandomResizedCropVideo")
        self.center = (bool(center[0]), bool(center[1]))
        self.scale, self.ratio = (float(scale[0]), float(scale[1])), (float(ratio[0]), float(ratio[1]))
        self.max_attempts, self.interpolation = int(max_attempts), interpolation
        self.keys = dict_keys(keys, "RandomResizedCropVideo")

    def window(self, H: int, W: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the crop."""
        area = H * W
        log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(self.max_attempts):
            target = np.random.uniform(*self.scale) * area
            r = math.exp(np.random.uniform(*log_r))
            w, h = int(round(math.sqrt(target * r))), int(round(math.sqrt(target / r)))
            if 0 < w <= W and 0 < h <= H:
                top = (H - h) // 2 if self.center[0] else np.random.randint(0, H - h + 1)
                left = (W - w) // 2 if self.center[1] else np.random.randint(0, W - w + 1)
                return top, left, h, w
        in_ratio = W / H
        if in_ratio < self.ratio[0]:
            w, h = W, int(round(W / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            h, w = H, int(round(H * self.ratio[1]))
        else:
            h, w = H, W
        return (H - h) // 2, (W - w) // 2, h, w

    def __call__(self, results: dict) -> dict:
        win = None
        for k in self.keys:
            img = video(results, k, "RandomResizedCropVideo")
            if win is None:
                win = self.window(*img.shape[-2:])
            top, left, h, w = win
            results[k] = resize_frames(img[..., top:top + h, left:left + w], self.size, self.interpolation)
        return results


def _luma(img: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma ``[T, 1, H, W]`` of RGB frames (float32)."""
    return (0.299 * img[:, 0:1] + 0.587 * img[:, 1:2] + 0.114 * img[:, 2:3]).astype(np.float32)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)


@PIPELINES.register()
class ColorJitterVideo:
    """Random brightness, contrast and saturation changes of uint8 RGB frames ``[T, 3, H, W]``, in a random
    order. Each magnitude is uniform in ``[0, brightness]`` (``contrast``, ``saturation``), negated
    with probability 0.5, and used as the factor ``f = 1 + magnitude``:

    * brightness: ``x * f``;
    * contrast: ``x * f + m * (1 - f)``, ``m`` the mean luma of the clip (the same for all channels);
    * saturation: ``x * f + Y * (1 - f)``, ``Y`` the pixel's luma.

    Each result is rounded and clipped to 0..255. (BIDL 1.9 cast to uint8 before clipping, so bright
    pixels wrapped to dark ones, and blended contrast towards a luma-weighted colour; neither is kept.)
    """

    def __init__(self, brightness: float, contrast: float, saturation: float, keys: Sequence[Any] = ("img",)):
        for name, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if not 0 <= float(v) <= 1:
                raise ValueError(f"ColorJitterVideo: {name}={v!r}: expected in [0, 1]")
        self.brightness, self.contrast, self.saturation = float(brightness), float(contrast), float(saturation)
        self.keys = dict_keys(keys, "ColorJitterVideo")

    def draw(self) -> list[tuple[str, float]]:
        """The three (operation, factor) pairs in application order."""
        ops = []
        for name, m in (("brightness", self.brightness), ("contrast", self.contrast), ("saturation", self.saturation)):
            mag = np.random.uniform(0, m)
            if np.random.rand() < 0.5:
                mag = -mag
            ops.append((name, 1.0 + mag))
        order = np.random.permutation(3)
        return [ops[i] for i in order]

    @staticmethod
    def apply(img: np.ndarray, op: str, f: float) -> np.ndarray:
        x = img.astype(np.float32)
        if op == "brightness":
            y = x * f
        elif op == "contrast":
            y = x * f + float(_luma(x).mean()) * (1 - f)
        else:
            y = x * f + _luma(x) * (1 - f)
        return _to_uint8(y)

    def __call__(self, results: dict) -> dict:
        ops = self.draw()
        for k in self.keys:
            img = video(results, k, "ColorJitterVideo", ndim=4)
            if img.dtype != np.uint8 or img.shape[1] != 3:
                raise ValueError(f"ColorJitterVideo: results[{k!r}] is {img.dtype} {list(img.shape)}; expected "
                                 "uint8 RGB frames [T, 3, H, W]")
            for op, f in ops:
                img = self.apply(img, op, f)
            results[k] = img
        return results
