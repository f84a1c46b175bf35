"""What a model reads, checked against the config's data, and the data itself: a config's split, or
seeded synthetic input of the model's shape (``--synthetic``) when the data is missing."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import torch
from torch import nn

from .classifier import ImageClassifier
from .datasets import BaseDataset, build_dataset
from .datasets.synthetic import SyntheticData
from .layers import shape_tracing, trace_steps

#: The seed offset of each split's synthetic samples (so train, val and test differ).
SYNTHETIC_SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}
SYNTHETIC_HINT = "--synthetic (seeded random input of the model's shape, no data files needed)"


@dataclass(frozen=True)
class InputSpec:
    """What one sample's ``img`` must be for a model: ``[T, *step_shape]`` of ``kind`` ('float' or 'int')."""

    timestep: Optional[int]             # T the model needs exactly (attention over all steps), else None
    step_shape: Optional[tuple]         # per-step shape, e.g. (C, H, W) or () for one token per step
    kind: str                           # 'float' (frames, encodings) or 'int' (token ids)


def input_kind(backbone: nn.Module) -> str:
    """'int' or 'float': the backbone's ``input_dtype`` when it declares one, else 'int' for a model
    with an embedding (it reads token ids), else 'float'."""
    declared = getattr(backbone, "input_dtype", None)
    if declared is not None:
        dt = declared if isinstance(declared, torch.dtype) else getattr(torch, str(declared).removeprefix("torch."),
                                                                        None)
        if not isinstance(dt, torch.dtype):
            raise ValueError(f"{type(backbone).__name__}.input_dtype={declared!r}: not a torch dtype name")
        return "float" if dt.is_floating_point else "int"
    if any(isinstance(m, (nn.Embedding, nn.EmbeddingBag)) for m in backbone.modules()):
        return "int"
    return "float"


def model_input(model: ImageClassifier, cfg: Mapping[str, Any]) -> InputSpec:
    """The input the model declares: ``backbone.timestep`` when it needs exactly that many steps
    (attention over time; other models take any T, see :meth:`~bidl_models.backbones.Backbone.forward`),
    ``backbone.input_shape`` (per step; for dense input ``models_compile_inputshape[0][1:]`` when the
    backbone gives none), ``backbone.input_dtype`` (see :func:`input_kind`)."""
    bb = model.backbone
    whole = getattr(bb, "whole_sequence_layers", None)
    t = bb.timestep if callable(whole) and whole() else None
    kind = input_kind(bb)
    shape = getattr(bb, "input_shape", None)
    if callable(shape):
        shape = None
    shapes = cfg.get("models_compile_inputshape")
    if shape is None and shapes and kind == "float":
        shape = tuple(int(d) for d in shapes[0][1:])
    return InputSpec(t, None if shape is None else tuple(int(d) for d in shape), kind)


def check_input_shape(model: ImageClassifier, cfg: Mapping[str, Any], dataset: BaseDataset, key: str) -> None:
    """ValueError naming the config keys when the data's samples (shape, time steps, dtype) do not fit
    what the model declares (:func:`model_input`)."""
    if len(dataset) == 0:
        raise ValueError(f"{key}: the dataset {dataset.source!r} has no samples")
    img = torch.as_tensor(dataset[0]["img"])
    shape = tuple(int(d) for d in img.shape)
    dtype = str(img.dtype).removeprefix("torch.")
    spec = model_input(model, cfg)
    bbcfg = cfg["model"]["backbone"]
    bbname = bbcfg.get("type", type(model.backbone).__name__)
    step_names = {3: "C, H, W", 0: ""}.get(len(spec.step_shape or ()), ", ".join(
        f"d{i}" for i in range(len(spec.step_shape or ()))))
    if spec.step_shape is not None and len(shape) != 1 + len(spec.step_shape):
        want = f"[T{', ' + step_names if step_names else ''}]"
        raise ValueError(f"{key}: sample 0 of {dataset.source!r} has img shape {list(shape)}; expected {want} "
                         f"for model.backbone type={bbname!r} (check the pipeline)")
    if spec.step_shape is None and len(shape) < (2 if spec.kind == "float" else 1):
        raise ValueError(f"{key}: sample 0 of {dataset.source!r} has img shape {list(shape)}; expected [T, ...] "
                         "(check the pipeline)")
    if spec.kind == "int" and img.is_floating_point():
        raise ValueError(f"{key}: samples of {dataset.source!r} are {dtype} {list(shape)} but model.backbone "
                         f"type={bbname!r} reads integer token ids (an int64 [T] per sample); check the pipeline")
    if spec.kind == "float" and not img.is_floating_point():
        raise ValueError(f"{key}: samples of {dataset.source!r} are {dtype} {list(shape)} but model.backbone "
                         f"type={bbname!r} takes float input; add dict(type='ToTensorType', keys=['img'], "
                         "dtype='float32') to the pipeline")
    if spec.timestep is not None and shape[0] != spec.timestep:
        raise ValueError(f"{key}: samples of {dataset.source!r} have T={shape[0]} frames but "
                         f"model.backbone.timestep={bbcfg.get('timestep')} (its attention over time needs exactly "
                         "that many)")
    if spec.step_shape is not None and shape[1:] != spec.step_shape:
        keys = [k for k in ("c0", "h0", "w0", "input_channels", "h", "w") if k in bbcfg]
        given = ", ".join(f"{k}={bbcfg[k]}" for k in keys) or "defaults"
        raise ValueError(f"{key}: samples of {dataset.source!r} are [{step_names}]={list(shape[1:])} per step but "
                         f"the model expects {list(spec.step_shape)} (model.backbone {given}; "
                         f"models_compile_inputshape={cfg.get('models_compile_inputshape')})")
    shapes = cfg.get("models_compile_inputshape")
    if shapes and spec.kind == "float" and tuple(int(d) for d in shapes[0][1:]) != shape[1:]:
        raise ValueError(f"models_compile_inputshape[0]={list(shapes[0])} does not match the data's per-step "
                         f"input [1, {', '.join(map(str, shape[1:]))}] ({key}: {dataset.source!r})")


def dataset_defaults(data: Mapping[str, Any]) -> Optional[dict]:
    """``default_args`` of :func:`~bidl_models.datasets.build_dataset`: BIDL's ``data.data_root``, for the
    datasets that take a ``data_root`` (and whose config entry does not set its own)."""
    root = data.get("data_root")
    return {"data_root": root} if root is not None else None


def class_count(backbone: nn.Module, spec: InputSpec) -> int:
    """Output columns of ``backbone`` (its classes; 1 for a one-logit model), from a shape trace of one
    sample (no compute; the module's train / eval modes are kept)."""
    T = trace_steps(backbone) if hasattr(backbone, "run") else int(getattr(backbone, "timestep", 1))
    dtype = torch.float32 if spec.kind == "float" else torch.int64
    with shape_tracing(backbone):
        if hasattr(backbone, "run"):             # a Backbone: [T, B, ...] chunks, T=1 unless attention needs all
            y = backbone.run(torch.zeros((T, 1) + tuple(spec.step_shape or ()), dtype=dtype))[0][-1]
        else:
            y = backbone(torch.zeros((1, T) + tuple(spec.step_shape or ()), dtype=dtype))
    return int(y.shape[-1])


def synthetic_split(model: ImageClassifier, cfg: Mapping[str, Any], key: str, n: int, seed: int = 0) -> SyntheticData:
    """``n`` seeded samples of the model's input for split ``key`` (``data.train`` ...): T =
    ``model.backbone.timestep``, the per-step shape of :func:`model_input`, labels in its classes."""
    bb = model.backbone
    spec = model_input(model, cfg)
    if spec.step_shape is None:
        raise ValueError(f"--synthetic: the per-step input size of model.backbone type="
                         f"{type(bb).__name__!r} is not known from the config; set model.backbone h and w "
                         "(or c0, h0, w0) or models_compile_inputshape")
    high = getattr(bb, "input_high", None)
    if spec.kind == "int" and not high:
        raise ValueError(f"--synthetic: model.backbone type={type(bb).__name__!r} reads token ids but declares no "
                         "vocabulary size (input_high)")
    T = int(getattr(bb, "timestep", 0) or 0)
    if T < 1:
        raise ValueError(f"--synthetic: model.backbone type={type(bb).__name__!r} has no timestep; set "
                         "model.backbone.timestep")
    split = key.rsplit(".", 1)[-1]
    return SyntheticData(int(n), T, spec.step_shape, class_count(bb, spec),
                         seed=seed * 10 + SYNTHETIC_SPLIT_SEEDS.get(split, 3),
                         dtype="float32" if spec.kind == "float" else "int64", high=high, name=f"synthetic {key}")


def missing_data_message(err: Exception, key: str, cfg: Mapping[str, Any], model: Optional[ImageClassifier]) -> str:
    """A dataset's not-found message with the frame count it needs filled in (``frames_number_<T>_``:
    the split's ``frames_number``, else the model's ``timestep``) and the ``--synthetic`` way out."""
    text = str(err)
    data = cfg.get("data") or {}
    entry = data.get(key.rsplit(".", 1)[-1]) if isinstance(data, Mapping) else None
    T = entry.get("frames_number") if isinstance(entry, Mapping) else None
    if T is None and model is not None:
        T = getattr(model.backbone, "timestep", None)
    if T is not None:
        text = text.replace("frames_number_<T>_", f"frames_number_{int(T)}_")
    return f"{text}; or run with {SYNTHETIC_HINT}"


def build_split(cfg: Mapping[str, Any], split: str, model: Optional[ImageClassifier] = None,
                synthetic: Optional[int] = None, seed: int = 0) -> BaseDataset:
    """The dataset of ``data.<split>``, or with ``synthetic`` that many seeded samples of the model's
    input (:func:`synthetic_split`). A missing data file or folder: FileNotFoundError with the real
    frame count and the ``--synthetic`` hint (:func:`missing_data_message`)."""
    key = f"data.{split}"
    if synthetic:
        if model is None:
            raise ValueError("--synthetic needs the model (its input shape and classes)")
        return synthetic_split(model, cfg, key, synthetic, seed)
    data = cfg.get("data")
    if not isinstance(data, Mapping) or split not in data or not data[split]:
        have = sorted(data) if isinstance(data, Mapping) else data
        raise ValueError(f"config: missing {key} (data: {have}); give it, or run with {SYNTHETIC_HINT}")
    entry = data[split]
    entry = entry.to_dict() if hasattr(entry, "to_dict") else dict(entry)
    try:
        return build_dataset(entry, dataset_defaults(data), where=key)
    except FileNotFoundError as e:
        raise FileNotFoundError(missing_data_message(e, key, cfg, model)) from None
