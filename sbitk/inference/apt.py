r"""The atomic loss of automatic posterior transformation (APT, SNPE-C), for NPE on θ not drawn
from the prior.

Maximum likelihood on pairs whose θ come from a proposal :math:`\tilde p(\theta)` learns the
*proposal posterior* :math:`\tilde p(\theta \mid x) \propto \tilde p(\theta)\, p(x \mid \theta)`,
not the posterior. APT (Greenberg, Nonnenmacher & Macke 2019) trains :math:`q(\theta \mid x)`
instead through a distribution over a finite set of *atoms* :math:`\{\theta_1 = \theta_i,
\theta_2, \ldots, \theta_K\}`, the row's own θ and :math:`K - 1` others of the batch:

.. math::
    \tilde q(\theta_i \mid x_i) = \frac{q(\theta_i \mid x_i) / p(\theta_i)}
    {\sum_{k=1}^{K} q(\theta_k \mid x_i) / p(\theta_k)},
    \qquad \mathcal{L} = -\mathbb{E}\left[\log \tilde q(\theta_i \mid x_i)\right].

Its minimiser is :math:`q(\theta \mid x) = p(\theta \mid x)` wherever the proposal puts mass,
whatever the proposal, and no proposal density is needed: rows of every round train together.
The density ratio :math:`q / p` is the same in θ and in the prior's unconstrained coordinates,
so the estimator's own coordinates serve. The normaliser of :math:`q` cancels inside the sum,
so an unnormalised density trains as well.

References:
    Greenberg, Nonnenmacher & Macke (2019), Automatic posterior transformation for
    likelihood-free inference, arXiv:1905.07488.

Example:
    >>> import torch
    >>> from sbitk.models.gaussian import ConditionalGaussian
    >>> model = ConditionalGaussian(2, 2)
    >>> atomic = AtomicLoss(model, lambda a: -0.5 * (a**2).sum(-1), atoms=4)
    >>> atomic.loss(torch.randn(16, 2), torch.randn(16, 2)).shape
    torch.Size([16])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from sbitk.errors import SbitkError

#: Atoms per row, the row's own θ included (sbi's default for APT, and Greenberg et al.'s).
ATOMS = 10


class AtomicLoss(nn.Module):
    """Wraps a posterior estimator so that training minimises APT's atomic loss.

    Only ``loss`` changes; the estimator's standardisation and parameter groups are passed
    through, and the estimator itself (``model``) is what is kept after training. An estimator
    with ``members`` (an ensemble) gets the loss for each member, which keeps them independent.

    Args:
        model: An estimator of the contract with a density (``model(context).log_prob``).
        log_prior: The prior's log density in the estimator's coordinates, ``(B, D) -> (B,)``,
            up to a constant.
        atoms: Atoms per row, its own θ included (at least 2).
        standardize: Let training fit the estimator's standardisation to its rows; ``False``
            keeps what it has (training resumed on more rows).
    """

    def __init__(
        self,
        model: nn.Module,
        log_prior: Callable[[Tensor], Tensor],
        atoms: int = ATOMS,
        standardize: bool = True,
    ):
        super().__init__()
        if isinstance(atoms, bool) or not isinstance(atoms, int) or atoms < 2:
            raise SbitkError(f"atoms must be an integer >= 2, got {atoms!r}")
        self.model, self.log_prior, self.atoms = model, log_prior, atoms
        for hook in ("fit_standardization", "optimizer_groups")[not standardize :]:
            if callable(getattr(model, hook, None)):
                setattr(self, hook, getattr(model, hook))

    def loss(self, inputs: Tensor, context: Tensor | None = None) -> Tensor:
        """The atomic loss of each row of ``inputs`` (B, D) given ``context`` (B, C): (B,).

        Atom k of row i is row ``(i + s_k) mod B`` of the batch, for ``K - 1`` distinct shifts
        :math:`s_k` drawn anew for each call (the batches are shuffled anyway); held-out rows
        (the model in eval mode) always get the same shifts, so that early stopping watches a
        deterministic loss. A batch of fewer than ``K`` rows uses them all.
        """
        if context is None:
            raise SbitkError("the atomic loss trains a posterior: pass the context x")
        n = inputs.shape[0]
        if n < 2:
            return inputs.new_zeros(n)
        generator = None if self.training else torch.Generator().manual_seed(0)
        shifts = 1 + torch.randperm(n - 1, generator=generator)[: self.atoms - 1]
        rows = torch.arange(n)
        index = torch.cat((rows[None], (rows[None] + shifts[:, None]) % n)).to(inputs.device)
        atoms = inputs[index]  # (K, B, D): atom k of every row
        log_prior = self.log_prior(inputs)[index]
        parts = getattr(self.model, "members", None) or [self.model]
        return sum(_atomic(part, atoms, context, log_prior) for part in parts)


def _atomic(part: nn.Module, atoms: Tensor, context: Tensor, log_prior: Tensor) -> Tensor:
    """``-log q̃(θ_i | x_i)`` over the atoms (K, B, D), the row's own first: (B,)."""
    logits = part(context).log_prob(atoms) - log_prior  # (K, B)
    return torch.logsumexp(logits, dim=0) - logits[0]


__all__ = ["ATOMS", "AtomicLoss"]
