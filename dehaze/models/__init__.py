"""Neural networks. Each model config says how to build its network (:meth:`training.config.ModelKind.build`):
there is no registry of classes here and no dotted-string class lookup."""

from __future__ import annotations

from torch import nn

from training.config import ModelKind


def build_network(cfg: ModelKind) -> nn.Module:
    """The network a model config describes, freshly initialised (seed the RNG before calling)."""
    return cfg.build()
