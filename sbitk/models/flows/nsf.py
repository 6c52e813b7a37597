"""Neural spline flows: rational-quadratic spline couplings (or autoregressive splines)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from torch import nn

from sbitk.models.flows.autoregressive import autoregressive_steps
from sbitk.models.flows.coupling import coupling_steps
from sbitk.models.flows.flow import Flow, FlowConfig, FlowError, make_config
from sbitk.models.flows.transforms import SplineMap, Transform


@dataclasses.dataclass(frozen=True)
class NSFConfig(FlowConfig):
    """Config of :class:`NSF`.

    Args:
        bins: Number of spline bins K.
        bound: Half-width B of the spline interval (in standardised units); identity outside.
        autoregressive: Use MADE autoregressive splines instead of couplings.
    """

    bins: int = 8
    bound: float = 5.0
    autoregressive: bool = False


class NSF(Flow):
    """Neural spline flow: rational-quadratic spline couplings with linear tails.

    With ``autoregressive=True`` each step is a masked autoregressive spline (RQ-NSF (AR)),
    which is more expressive per step but samples in D sequential passes.

    Args:
        features: Dimension D of the inputs.
        context: Dimension C of the context (0: unconditional).
        embedding: Optional embedding net for the context (see :class:`Flow`).
        **options: Further fields of :class:`NSFConfig` (``transforms``, ``hidden_features``,
            ``activation``, ``permutation``, ``seed``, ``bins``, ``bound``, ``autoregressive``).

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
        if cfg.bins < 1 or not cfg.bound > 0:
            raise FlowError(
                f"NSF: expected bins >= 1 and bound > 0, found bins={cfg.bins}, bound={cfg.bound}"
            )
        steps = autoregressive_steps if cfg.autoregressive else coupling_steps
        return steps(self, lambda: SplineMap(cfg.bins, cfg.bound))


__all__ = ["NSF", "NSFConfig"]
