"""Neural ratio estimation (NRE): learn the likelihood-to-evidence ratio by classification.

A classifier :math:`d(x, \\theta)` tells simulated pairs from pairs whose θ is another row's
(:mod:`sbitk.models.ratio`); its logit estimates :math:`\\log p(x \\mid \\theta) - \\log p(x)`
up to a function of x. The posterior of i.i.d. trials :math:`x_{1:T}` is then

.. math::
    \\log p(\\theta \\mid x_{1:T}) = \\log p(\\theta) + \\sum_{t=1}^{T} d(x_t, \\theta)
    + \\text{const},

sampled by the same vectorized MCMC as NLE, which NRE is in every other respect: the ratio
stands where the surrogate likelihood stood (model files record it as an NLE model whose
estimator is ``ratio``), and failed simulations are refused or excluded alike.

References:
    Hermans, Begy & Louppe (2020), arXiv:1903.04057; Durkan, Murray & Papamakarios (2020),
    arXiv:2002.03712; Miller, Weniger & Forré (2022), arXiv:2210.06170.

Example:
    >>> import torch
    >>> from sbitk.inference.training import TrainConfig
    >>> from sbitk.posteriors.mcmc import MCMCConfig
    >>> from sbitk.simulation.priors import Normal
    >>> prior = Normal(0.0, 1.0, dim=1)
    >>> theta = prior.sample(2000, torch.Generator().manual_seed(0))
    >>> x = theta + 0.5 * torch.randn(2000, 1, generator=torch.Generator().manual_seed(1))
    >>> nre = NRE(prior, config=TrainConfig(max_epochs=5, progress=False),
    ...           mcmc=MCMCConfig(num_chains=20, warmup=20, progress=False))
    >>> nre.fit(theta, x).sample(40, x=torch.zeros(1), seed=0).shape
    torch.Size([40, 1])
"""

from __future__ import annotations

from sbitk.errors import SbitkError
from sbitk.inference.nle import NLE
from sbitk.models.contract import ESTIMATED, EXACT, RATIO, density_kind


class NRE(NLE):
    """Neural ratio estimation: trains a ratio estimator, samples prior × ratio by MCMC.

    Takes :class:`~sbitk.inference.nle.NLE`'s arguments. ``estimator`` must be a ratio
    estimator (density kind ``ratio``); ``None`` gives the default,
    :data:`~sbitk.models.registry.DEFAULT_ESTIMATORS` (NRE-C). Its options (``loss="a"``,
    ``"b"``, ``"c"``, ``"balanced"``, ``atoms``, ``gamma``, ...) go through ``**estimator_kwargs``.
    """

    role = "nre"
    default_key = "ratio"

    def _check_kind(self, cls: type) -> None:
        kind = density_kind(cls)
        if kind != RATIO:
            where = "NLE (method nle) or NPE" if kind in (EXACT, ESTIMATED) else "NPE"
            raise SbitkError(
                f"NRE trains a classifier of (θ, x) pairs; estimator {cls.__name__} is no "
                f"classifier (its density is {kind!r}): use it with {where}"
            )


__all__ = ["NRE"]
