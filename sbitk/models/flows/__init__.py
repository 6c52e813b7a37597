"""Conditional normalizing flows: transforms, and the named flows NICE, RealNVP, Glow, NSF, MAF.

Every flow is an ``nn.Module``: ``flow(context)`` returns a distribution over the inputs and
``flow.loss(inputs, context)`` is its negative log-likelihood. :data:`FLOWS` is the one table
of named flows by name.
"""

from __future__ import annotations

from sbitk.models.flows.autoregressive import MAF, MAFConfig, MaskedAutoregressive
from sbitk.models.flows.coupling import (
    NICE,
    Coupling,
    Glow,
    GlowConfig,
    NICEConfig,
    RealNVP,
    RealNVPConfig,
)
from sbitk.models.flows.flow import Flow, FlowConfig, FlowDistribution, FlowError
from sbitk.models.flows.nsf import NSF, NSFConfig
from sbitk.models.flows.transforms import (
    ActNorm,
    AdditiveMap,
    AffineMap,
    BijectionTransform,
    Composite,
    ElementwiseAffine,
    LULinear,
    Permutation,
    RandomPermutation,
    ReversePermutation,
    Scale,
    SplineMap,
    StandardizeTransform,
    Transform,
)

#: Named flows by the name configs and the command line use.
FLOWS: dict[str, type[Flow]] = {
    "nice": NICE,
    "realnvp": RealNVP,
    "glow": Glow,
    "nsf": NSF,
    "maf": MAF,
}

__all__ = [
    "FLOWS",
    "MAF",
    "NICE",
    "NSF",
    "ActNorm",
    "AdditiveMap",
    "AffineMap",
    "BijectionTransform",
    "Composite",
    "Coupling",
    "ElementwiseAffine",
    "Flow",
    "FlowConfig",
    "FlowDistribution",
    "FlowError",
    "Glow",
    "GlowConfig",
    "LULinear",
    "MAFConfig",
    "MaskedAutoregressive",
    "NICEConfig",
    "NSFConfig",
    "Permutation",
    "RandomPermutation",
    "RealNVP",
    "RealNVPConfig",
    "ReversePermutation",
    "Scale",
    "SplineMap",
    "StandardizeTransform",
    "Transform",
]
