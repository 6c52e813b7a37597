"""Z-scoring with statistics learned from the first look at the training data."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from sbitk.errors import SbitkError


class Standardize(nn.Module):
    """Affine z-scoring ``(x - mean) / std`` over the last dimension, statistics kept as buffers.

    The statistics start as the identity (mean 0, std 1) and are set by :meth:`fit`; they are
    saved and loaded with the module's ``state_dict``.

    Args:
        features: Size of the last dimension.
        min_std: Standard deviations below this (constant columns) are replaced by 1.

    Example:
        >>> s = Standardize(2)
        >>> x = torch.tensor([[0.0, 10.0], [2.0, 30.0]])
        >>> s.fit(x)
        Standardize(features=2)
        >>> s(x)
        tensor([[-0.7071, -0.7071],
                [ 0.7071,  0.7071]])
    """

    def __init__(self, features: int, min_std: float = 1e-12):
        super().__init__()
        self.features = int(features)
        self.min_std = float(min_std)
        self.register_buffer("mean", torch.zeros(self.features))
        self.register_buffer("std", torch.ones(self.features))

    @torch.no_grad()
    def fit(self, x: Tensor) -> Standardize:
        """Set mean and std from samples ``x`` (*, features), ignoring non-finite rows."""
        if x.shape[-1] != self.features:
            raise SbitkError(
                f"Standardize.fit: expected samples with last dimension {self.features}, "
                f"found shape {tuple(x.shape)}"
            )
        x = x.reshape(-1, self.features)
        x = x[torch.isfinite(x).all(-1)]
        if x.shape[0] < 2:
            raise SbitkError(
                f"Standardize.fit: expected at least 2 finite rows, found {x.shape[0]}"
            )
        mean = x.mean(0)
        std = x.std(0)
        std = torch.where(std > self.min_std, std, torch.ones_like(std))
        self.mean.copy_(mean.to(self.mean))
        self.std.copy_(std.to(self.std))
        return self

    def forward(self, x: Tensor) -> Tensor:
        """Standardise ``x`` (*, features)."""
        return (x - self.mean) / self.std

    def inverse(self, z: Tensor) -> Tensor:
        """Undo the standardisation of ``z`` (*, features)."""
        return z * self.std + self.mean

    def log_abs_det(self) -> Tensor:
        r"""``log|det J|`` of :meth:`forward`, :math:`-\sum_i \log \sigma_i`, a scalar."""
        return -torch.log(self.std).sum()

    def extra_repr(self) -> str:
        return f"features={self.features}"


__all__ = ["Standardize"]
