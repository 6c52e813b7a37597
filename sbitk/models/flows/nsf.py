"""Neural spline flows: rational-quadratic spline couplings (or autoregressive splines)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import ClassVar

from torch import nn

from sbitk.models.flows.autoregressive import autoregressive_steps
from sbitk.models.flows.coupling import CONDITIONERS, coupling_steps
from sbitk.models.flows.flow import Flow, FlowConfig, FlowError, make_config
from sbitk.models.flows.transforms import SplineMap, Transform

#: Spline options for θ on a box as a posterior (unless given): the standardised box spans ±√3, so
#: an interval of ±3 puts most of the 10 bins on it, where the default ±5 leaves it about three of
#: 8; a second residual block sharpens the thin, edge-cut posteriors of two_moons. Held-out
#: log-likelihood of two_moons with 10,000 simulations: 3.32 with the NSF defaults, 3.52 with
#: these (sbi: 3.55).
BOX_NSF_OPTIONS = {"bins": 10, "bound": 3.0, "hidden_features": (64, 64, 64)}
#: Options as a likelihood (unless given): learnt linear maps (LU) between the couplings. On slcp
#: with 10,000 simulations the held-out log-likelihood rose from -12.43 to -12.06 (sbi's spline
#: flow, which has them too: -11.98).
NLE_NSF_OPTIONS = {"permutation": "lu"}


@dataclasses.dataclass(frozen=True)
class NSFConfig(FlowConfig):
    """Config of :class:`NSF`.

    Args:
        bins: Number of spline bins K.
        bound: Half-width B of the spline interval (in standardised units); identity outside.
        autoregressive: Use MADE autoregressive splines instead of couplings.
        bin_scale: Factor on the conditioner's unnormalised bin widths and heights (see
            :class:`~sbitk.models.flows.transforms.SplineMap`). The default, 1/8, keeps the knots
            near uniform unless the data insist (see docs/benchmarks.md for what it changes).
        conditioner: The couplings' conditioner, ``"residual"`` (the default, a
            :class:`~sbitk.nn.mlp.GatedResidualMLP`) or ``"mlp"``. Left unset (None) for the
            autoregressive variant, whose conditioner is a MADE.
    """

    bins: int = 8
    bound: float = 5.0
    autoregressive: bool = False
    bin_scale: float = 1 / 8
    conditioner: str | None = None


class NSF(Flow):
    """Neural spline flow: rational-quadratic spline couplings with linear tails.

    With ``autoregressive=True`` each step is a masked autoregressive spline (RQ-NSF (AR)),
    which is more expressive per step but samples in D sequential passes.

    Args:
        features: Dimension D of the inputs.
        context: Dimension C of the context (0: unconditional).
        embedding: Optional embedding net for the context (see :class:`Flow`).
        **options: Further fields of :class:`NSFConfig` (``transforms``, ``hidden_features``,
            ``activation``, ``permutation``, ``seed``, ``bins``, ``bound``, ``autoregressive``,
            ``bin_scale``, ``conditioner``).

    References:
        Durkan, Bekasov, Murray and Papamakarios, "Neural spline flows" (2019), arXiv:1906.04032.

    Example:
        >>> import dataclasses, torch
        >>> flow = NSF(2, 3, transforms=2, hidden_features=(16,), bins=4)
        >>> copy = NSF.from_config(dataclasses.asdict(flow.config))
        >>> _ = copy.load_state_dict(flow.state_dict())
        >>> c, x = torch.randn(3), torch.randn(2)
        >>> torch.equal(copy(c).log_prob(x), flow(c).log_prob(x))
        True
    """

    config_class = NSFConfig
    #: As a posterior on a box prior the spline flow models θ itself (see BOX_NSF_OPTIONS): the
    #: logit stretches mass near an edge into a long tail the splines fit worse.
    box_on_theta: ClassVar[bool] = True

    @classmethod
    def role_options(cls, role: str, box: bool) -> dict:
        """Default options for a role (see :mod:`sbitk.models.contract`)."""
        if role == "likelihood":
            return dict(NLE_NSF_OPTIONS)
        return dict(BOX_NSF_OPTIONS) if box else {}

    def __init__(
        self,
        features: int,
        context: int = 0,
        *,
        embedding: nn.Module | Mapping | None = None,
        **options,
    ):
        super().__init__(make_config(NSFConfig, features, context, options), embedding)

    def build(self) -> list[Transform]:
        cfg = self.config
        if cfg.bins < 1 or not cfg.bound > 0 or not 0 < cfg.bin_scale < math.inf:
            raise FlowError(
                f"NSF: expected bins >= 1, bound > 0 and a finite bin_scale > 0, found "
                f"bins={cfg.bins}, bound={cfg.bound}, bin_scale={cfg.bin_scale}"
            )

        def make_map() -> SplineMap:
            return SplineMap(cfg.bins, cfg.bound, cfg.bin_scale)

        if cfg.autoregressive:
            if cfg.conditioner is not None:
                raise FlowError(
                    "NSF: the autoregressive variant's conditioner is a MADE; leave conditioner "
                    f"unset, found {cfg.conditioner!r}"
                )
            return autoregressive_steps(self, make_map)
        if cfg.conditioner not in (None, *CONDITIONERS):
            raise FlowError(
                f"NSF: expected conditioner among {list(CONDITIONERS)}, found {cfg.conditioner!r}"
            )
        return coupling_steps(self, make_map, conditioner=cfg.conditioner or "residual")


__all__ = ["BOX_NSF_OPTIONS", "NLE_NSF_OPTIONS", "NSF", "NSFConfig"]
