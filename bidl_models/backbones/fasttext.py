"""BIDL's text models: ``FastTextItout`` / ``FastTextlifplusItout`` (IMDB sentiment, one token per step).

Per step ``t`` a token id ``x_t`` (int, ``[B]``) goes through::

    e_t = embedding[x_t]              (vocab_size x embedding_dim; or one-hot rows x_t @ embedding)
    h_t = lif(e_t)                    FcLif / FcLifPlus (embedding_dim -> hidden_dim, BN on the state)
    y_t = fc(dropout(h_t))            Linear(hidden_dim, 1): one logit

and the result is the *last* step's ``y_T`` ``[B, 1]`` (BIDL's forward; its ``amode`` key is
accepted and does not change that). ``embedding_fc`` is BIDL's chip-path copy of the embedding
(``Linear(vocab, emb)`` whose weight is the embedding's transpose, the same storage): it is in the
state_dict as in BIDL's GPU-trained files, and a checkpoint without it (BIDL's CPU-trained files
drop it) gets it from ``embedding.weight``. The model declares ``input_shape = ()``,
``input_dtype = 'int64'``, ``input_high = vocab_size`` for the compiler and the grid.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import FcLif, FcLifPlus
from ..registry import BACKBONES
from .base import Backbone, check_itout


class TokenEmbedding(nn.Embedding):
    """``nn.Embedding`` that also takes one-hot rows (float ``[..., vocab]``: ``x @ weight``, BIDL's
    chip-path input made by its ``ToOneHot`` pipeline step); integer (or integral float) ids otherwise."""

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        if x.is_floating_point() and x.dim() >= 2 and x.shape[-1] == self.num_embeddings:
            return x @ self.weight
        return F.embedding(x.long(), self.weight)


@BACKBONES.register()
class FastTextItout(Backbone):
    """Embedding -> ``lif`` (FcLif, analog by default) -> dropout -> ``fc`` (one logit); last step."""

    input_dtype = "int64"
    fc_neuron = "lif"

    def __init__(self, timestep: int, vocab_size: int, embedding_dim: int, hidden_dim: int, cmode: str = "analog",
                 amode: str = "mean", soma_params: Any = "all_share", noise: float = 1e-3, neuron: str = "lif",
                 neuron_config: Optional[Sequence] = None, spike_func: Any = None, use_inner_loop: bool = False,
                 surrogate_width: float = 1.0, lifplus_form: str = "documented", bn_stats: Optional[str] = None):
        super().__init__()
        check_itout(spike_func, use_inner_loop, type(self).__name__)
        if str(neuron).lower() != self.fc_neuron:
            other = "FastTextlifplusItout" if self.fc_neuron == "lif" else "FastTextItout"
            raise ValueError(f"{type(self).__name__}: neuron={neuron!r}; expected {self.fc_neuron!r} (use {other} "
                             f"for neuron={'lifplus' if self.fc_neuron == 'lif' else 'lif'!r})")
        for key, val in (("timestep", timestep), ("vocab_size", vocab_size), ("embedding_dim", embedding_dim),
                         ("hidden_dim", hidden_dim)):
            if not isinstance(val, int) or isinstance(val, bool) or val < 1:
                raise ValueError(f"{type(self).__name__}: {key}={val!r}: expected a positive int")
        self.embedding = TokenEmbedding(vocab_size, embedding_dim)
        kw = dict(mode=cmode, soma_params=soma_params, noise=noise, surrogate_width=surrogate_width)
        if self.fc_neuron == "lifplus":
            self.lif = FcLifPlus(embedding_dim, hidden_dim, neuron_config=neuron_config, lifplus_form=lifplus_form,
                                 **kw)
        else:
            if neuron_config is not None:
                raise ValueError(f"neuron_config={neuron_config!r} is only used with neuron='lifplus'")
            self.lif = FcLif(embedding_dim, hidden_dim, **kw)
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(hidden_dim, 1)
        self.embedding_fc = nn.Linear(vocab_size, embedding_dim, bias=False)
        self.embedding_fc.weight = nn.Parameter(self.embedding.weight.detach().t())   # tied: the same storage
        self.input_high = vocab_size
        self.amode_key = amode   # BIDL's key; the result is the last step's either way
        self._finish([["embedding"], ["lif"], ["dropout", "fc"]], timestep, "pick", (), bn_stats=bn_stats)

    def check_input(self, x: Tensor) -> None:
        """Token ids ``[B, T]`` or one-hot rows ``[B, T, vocab_size]``."""
        if not (x.dim() == 2 or (x.dim() == 3 and x.shape[-1] == self.input_high)):
            raise ValueError(f"input of shape {list(x.shape)}: expected token ids [B, T] or one-hot rows "
                             f"[B, T, {self.input_high}]")

    def fill_state_dict(self, sd: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``sd`` with the tied ``embedding_fc.weight`` added when absent (BIDL's CPU-trained files);
        ValueError when it is present and is not the transposed ``embedding.weight``."""
        out = dict(sd)
        emb = out.get("embedding.weight")
        if emb is None:
            return out
        tied = out.get("embedding_fc.weight")
        if tied is None:
            out["embedding_fc.weight"] = emb.t()
        elif tied.shape == emb.t().shape and not torch.equal(tied, emb.t()):
            raise ValueError("checkpoint: embedding_fc.weight is not the transpose of embedding.weight (BIDL ties "
                             "them); expected the same values")
        return out

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        """Device and dtype moves keep ``embedding_fc.weight`` tied to the embedding."""
        out = super()._apply(fn, recurse)
        self.embedding_fc.weight.data = self.embedding.weight.data.t()
        return out


@BACKBONES.register()
class FastTextlifplusItout(FastTextItout):
    """FastTextItout with an ``FcLifPlus`` (cell ``lif.lifplus``); BIDL's LIF+ update by default."""

    fc_neuron = "lifplus"

    def __init__(self, timestep: int, vocab_size: int, embedding_dim: int, hidden_dim: int, cmode: str = "analog",
                 amode: str = "mean", soma_params: Any = "all_share", noise: float = 1e-3, neuron: str = "lifplus",
                 neuron_config: Optional[Sequence] = None, spike_func: Any = None, use_inner_loop: bool = False,
                 surrogate_width: float = 1.0, lifplus_form: str = "bidl", bn_stats: Optional[str] = None):
        super().__init__(timestep, vocab_size, embedding_dim, hidden_dim, cmode, amode, soma_params, noise, neuron,
                         neuron_config, spike_func, use_inner_loop, surrogate_width, lifplus_form, bn_stats)
