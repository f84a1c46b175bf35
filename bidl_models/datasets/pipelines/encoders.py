"""Spike encoders for static images: ``Rate``, ``Latency`` (BIDL's step type ``Temporal``, still
accepted in configs) and ``Population``.

Input ``img``: pixel intensities in [0, 1], ``[H, W]`` (one channel) or ``[C, H, W]``, numpy or tensor
(the ``MNIST`` dataset gives float32 ``[28, 28]``). Output ``img``: float32 numpy ``[T, C', H, W]``
(``C' = C``, or ``C * pop_neuron`` for ``Population``); ``img_shape`` is set. Computations are in
float32, as BIDL's.

``Rate`` is the only random one: with ``seed=None`` it draws from numpy's global RNG (seeded by
``bidl_models.train``), with an int ``seed`` from a generator seeded by ``(seed, sample_idx)``, so
sample ``i`` always gets the same spikes whatever the order or worker that reads it.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np
import torch

from ...registry import PIPELINES
from .compose import dict_keys, get, sample_rng


def _image(results: dict, key: str, step: str, unit: bool = False) -> np.ndarray:
    img = get(results, key, step)
    img = img.numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
    if img.ndim == 2:
        img = img[None]
    if img.ndim != 3:
        raise ValueError(f"{step}: results[{key!r}] has shape {list(img.shape)}; expected [H, W] or [C, H, W]")
    img = img.astype(np.float32)
    if unit and img.size and (img.min() < 0 or img.max() > 1):
        raise ValueError(f"{step}: results[{key!r}] has values in [{img.min()}, {img.max()}]; expected pixel "
                         "intensities in [0, 1]")
    return img


def _time_steps(v: Any, step: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < 1:
        raise ValueError(f"{step}: time_steps={v!r}: expected a positive int")
    return int(v)


@PIPELINES.register()
class Rate:
    """Rate coding: at each of ``time_steps`` steps a pixel spikes with probability
    ``clip(x * gain + offset, 0, 1)``, independently (Bernoulli)."""

    def __init__(self, time_steps: int, gain: float = 1, offset: float = 0, seed: Optional[int] = None,
                 keys: Sequence[Any] = ("img",)):
        self.time_steps = _time_steps(time_steps, "Rate")
        self.gain, self.offset, self.seed = float(gain), float(offset), seed
        self.keys = dict_keys(keys, "Rate")

    def __call__(self, results: dict) -> dict:
        rng = sample_rng(self.seed, results)
        for k in self.keys:
            p = np.clip(_image(results, k, "Rate") * np.float32(self.gain) + np.float32(self.offset), 0, 1)
            out = (rng.random((self.time_steps,) + p.shape, dtype=np.float32) < p).astype(np.float32)
            results[k], results["img_shape"] = out, tuple(out.shape)
        return results


@PIPELINES.register("Latency", "Temporal")
class Latency:
    """Latency coding (BIDL's pipeline step ``Temporal``): one spike per pixel, brighter pixels earlier.

    Spike time ``t`` (in steps):

    * log (default): ``t = tau * ln(x' / (x' - threshold)) + first_spike_time``, ``x' = max(x, threshold
      + epsilon)`` (the RC-circuit charging time to ``threshold``);
    * ``linear=True``: ``t = tau * min(1 - x, 1 - threshold) + first_spike_time``;
    * ``normalize=True``: log times are rescaled so the latest is at step ``T - 1``; linear uses
      ``tau = T - 1 - first_spike_time``.

    The spike is at step ``round(t)`` (half to even); a time past ``T - 1`` gives no spike; with
    ``clip=True`` pixels below ``threshold`` never spike. Output values: ``max(on_target, off_target)``
    at spikes, ``max(0, off_target)`` elsewhere (BIDL's clamp). ``interpolate`` is accepted for BIDL's
    signature; only ``False`` (what BIDL does) is supported.
    """

    def __init__(self, time_steps: int, threshold: float = 0.01, tau: float = 1, first_spike_time: float = 0,
                 on_target: float = 1, off_target: float = 0, clip: bool = False, normalize: bool = False,
                 linear: bool = False, interpolate: bool = False, epsilon: float = 1e-7,
                 keys: Sequence[Any] = ("img",)):
        self.time_steps = _time_steps(time_steps, "Temporal")
        if interpolate:
            raise ValueError("Temporal: interpolate=True is not supported (BIDL ignores it as well)")
        if not 0 <= float(threshold) < 1:
            raise ValueError(f"Temporal: threshold={threshold!r}: expected in [0, 1)")
        self.threshold, self.tau, self.first = float(threshold), float(tau), float(first_spike_time)
        self.on, self.off, self.clip = float(on_target), float(off_target), bool(clip)
        self.normalize, self.linear, self.epsilon = bool(normalize), bool(linear), float(epsilon)
        self.keys = dict_keys(keys, "Temporal")

    def spike_time(self, x: np.ndarray) -> np.ndarray:
        """Continuous spike times (float32, same shape as ``x``)."""
        f32 = np.float32
        T, thr, first = self.time_steps, f32(self.threshold), f32(self.first)
        if self.linear:
            tau = f32(T - 1 - self.first) if self.normalize else f32(self.tau)
            return np.minimum(-tau * (x - f32(1)), -tau * (thr - f32(1))) + first
        xc = np.maximum(x, thr + f32(self.epsilon))
        t = f32(self.tau) * np.log(xc / (xc - thr))
        if self.first > 0:
            t = t + first
        if self.normalize:
            span = (t - first).max()
            t = (t - first) * f32(T - self.first - 1) / span + first if span > 0 else t
        return t.astype(np.float32)

    def __call__(self, results: dict) -> dict:
        T = self.time_steps
        for k in self.keys:
            x = _image(results, k, "Temporal", unit=True)
            t = self.spike_time(x)
            step = np.round(np.minimum(t, T - 1)).astype(np.int64)
            fires = np.round(t) <= T - 1
            if self.clip:
                fires &= x >= self.threshold
            spikes = (np.arange(T)[:, None, None, None] == step[None]) & fires[None]
            out = np.maximum(spikes.astype(np.float32) * np.float32(self.on), np.float32(self.off))
            results[k], results["img_shape"] = out, tuple(out.shape)
        return results


@PIPELINES.register()
class Population:
    """Population coding with ``pop_neuron`` Gaussian receptive fields per pixel (``pop_neuron >= 3``).

    Neuron ``i`` has centre ``u_i = (2i - 3) / (2 (n - 2))`` and width ``sigma = 1 / (1.5 (n - 2))``; its
    response ``r_i(x)`` (the normal density) is divided by its largest value over the image, and the
    neuron spikes once, at step ``floor((1 - r_i / max r_i) * T)``: the best-matching neurons fire
    first. Output channel ``c * n + i`` is neuron ``i`` of input channel ``c`` (for one channel: BIDL's
    ``[T, n, H, W]``).

    A response too small to register (``1 - r/max`` rounds to 1 in float32) gives step ``T``:
    ``overflow='drop'`` (default) sends no spike; ``overflow='wrap'`` fires it at step 0 instead, as BIDL
    1.9 does (a defect: the least responsive neurons fire first), for weights trained there.
    """

    def __init__(self, time_steps: int, pop_neuron: int = 5, overflow: str = "drop", keys: Sequence[Any] = ("img",)):
        self.time_steps = _time_steps(time_steps, "Population")
        if isinstance(pop_neuron, bool) or not isinstance(pop_neuron, (int, np.integer)) or pop_neuron < 3:
            raise ValueError(f"Population: pop_neuron={pop_neuron!r}: expected an int >= 3 (sigma = 1/1.5/(n-2))")
        if overflow not in ("drop", "wrap"):
            raise ValueError(f"Population: overflow={overflow!r}: expected 'drop' or 'wrap'")
        self.n, self.overflow, self.keys = int(pop_neuron), overflow, dict_keys(keys, "Population")
        self.centres = [(2 * i - 3) / 2 / (self.n - 2) for i in range(self.n)]
        self.sigma = 1 / 1.5 / (self.n - 2)

    def steps(self, x: np.ndarray) -> np.ndarray:
        """Spike step of every (neuron, channel, pixel): int64 ``[n, C, H, W]`` (``T`` = overflow)."""
        f32 = np.float32
        var, log_norm = f32(self.sigma) ** 2, f32(math.log(self.sigma) + math.log(math.sqrt(2 * math.pi)))
        out = []
        for u in self.centres:
            r = np.exp(-((x - f32(u)) ** 2) / (f32(2) * var) - log_norm)
            peak = r.max() if r.size else f32(1)
            rel = r / peak if peak > 0 else np.zeros_like(r)
            out.append(np.floor((f32(1) - rel) * f32(self.time_steps)).astype(np.int64))
        return np.stack(out)

    def __call__(self, results: dict) -> dict:
        T = self.time_steps
        for k in self.keys:
            x = _image(results, k, "Population")
            st = self.steps(x)                                        # [n, C, H, W]
            if self.overflow == "wrap":
                st = np.where(st > T - 1, 0, st)
            spikes = (np.arange(T)[:, None, None, None, None] == st[None]).astype(np.float32)  # [T, n, C, H, W]
            C, H, W = x.shape
            out = np.ascontiguousarray(spikes.transpose(0, 2, 1, 3, 4).reshape(T, C * self.n, H, W))
            results[k], results["img_shape"] = out, tuple(out.shape)
        return results
