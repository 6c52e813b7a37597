"""Several flows of one architecture evaluated in one pass: an ensemble's training loss.

An ensemble trains its members on the same batches, each on its own loss. Evaluated one member
after another, the small networks of a spline flow spend most of a step in the per-operation
cost of a thousand small tensor operations, not in arithmetic. Here the members' weights are
stacked along a leading member dimension (``torch.stack``, through which each member's
gradient flows back to its own weights), the couplings' conditioners run as batched matrix
products, and the splines run once over all members' rows: the same losses, from one pass.

Only what this module knows is stacked: couplings whose conditioner is a
:class:`~sbitk.nn.mlp.GatedResidualMLP` without dropout and whose map takes its parameters
parameter-major (the rational-quadratic spline), and permutations. Any other transform, and
the context's standardisation and embedding, run member by member on their slice.

Example:
    >>> import torch
    >>> from sbitk.models.flows import NSF
    >>> flows = [NSF(2, 3, transforms=2, hidden_features=(16,)) for _ in range(3)]
    >>> a, c = torch.randn(5, 2), torch.randn(5, 3)
    >>> z, log_det = stacked_forward(flows, a, c)
    >>> z.shape, log_det.shape
    (torch.Size([3, 5, 2]), torch.Size([3, 5]))
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from sbitk.models.flows.transforms import Permutation, Transform
from sbitk.nn.mlp import GatedResidualMLP


def stacked_forward(
    flows: Sequence[nn.Module], inputs: Tensor, context: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Each flow's latent (K, B, D) and log-determinant (K, B) for the same rows.

    Args:
        flows: The flows (:class:`~sbitk.models.flows.flow.Flow`), built alike
            (:func:`stackable`).
        inputs: Rows (B, D).
        context: Contexts (B, C), or None for unconditional flows.
    """
    c = None
    if context is not None:
        c = torch.stack([f.embed(context) for f in flows])  # (K, B, E)
    h = inputs.expand(len(flows), *inputs.shape)
    total = inputs.new_zeros(())
    for parts in zip(*(f.transform.transforms for f in flows), strict=True):
        h, log_det = _step(parts, h, c)
        total = total + log_det
    return h, total.expand(h.shape[:-1])


def stackable(flows: Sequence[nn.Module], inputs: Tensor, context: Tensor | None) -> bool:
    """Whether :func:`stacked_forward` serves these flows and rows: two flows or more of one class
    and config, rows (B, D) of their width D, and contexts (B, C) or none (anything else is
    left to the flows themselves, which check it)."""
    first = flows[0]
    alike = all(type(f) is type(first) and f.config == first.config for f in flows)
    rows = inputs.dim() == 2 and inputs.shape[-1] == first.features
    contexts = context is None or context.shape[:-1] == inputs.shape[:-1]
    return len(flows) > 1 and alike and rows and contexts


def _step(parts: Sequence[Transform], h: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor]:
    """One transform of every member on its rows h (K, B, D): (K, B, D) and log-dets (K, B)."""
    first = parts[0]
    if _stacked_coupling(first):
        return _coupling(parts, h, c)
    if isinstance(first, Permutation):
        perms = torch.stack([p.perm for p in parts])  # (K, D)
        index = perms.unsqueeze(1).expand(h.shape)
        return torch.gather(h, -1, index), h.new_zeros(())
    outs = [t(h[k], None if c is None else c[k]) for k, t in enumerate(parts)]
    return torch.stack([y for y, _ in outs]), torch.stack([ld for _, ld in outs])


def _stacked_coupling(transform: Transform) -> bool:
    """Whether a transform is a coupling (:class:`~sbitk.models.flows.coupling.Coupling`)
    that :func:`_coupling` stacks."""
    net = getattr(transform, "conditioner", None)
    return (
        isinstance(net, GatedResidualMLP)
        and hasattr(transform, "n_transformed")
        and hasattr(transform.map, "param_major")
        and all(len(block) == 4 for block in net.blocks)  # no dropout layer
    )


def _coupling(parts: Sequence[Transform], h: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor]:
    """The couplings' forward maps, as ``Coupling._transform`` makes each, stacked."""
    first = parts[0]
    identity, transformed = first._parts(h)
    hidden = _hidden([p.conditioner for p in parts], identity, c)  # (K, B, H)
    out = _linear([p.conditioner.output_layer for p in parts], hidden)  # (K, B, n·P)
    k, rows = h.shape[0], h.shape[1]
    params = out.view(k, rows, first.n_transformed, first.map.params)
    params = params.permute(3, 2, 0, 1).contiguous()  # (P, n, K, B), parameter-major
    y, log_det = first.map.param_major(transformed.movedim(-1, 0), params)
    return first._join(identity, y.movedim(0, -1)), log_det.sum(0)


def _hidden(nets: Sequence[GatedResidualMLP], x: Tensor, c: Tensor | None) -> Tensor:
    """:meth:`GatedResidualMLP.hidden_pair` of each member's network on its rows, stacked."""
    inputs = x if c is None else torch.cat([x, c], -1)
    h = _linear([n.input for n in nets], inputs)
    gates = [None] * len(nets[0].blocks)
    if c is not None:
        gates = [torch.sigmoid(_linear(g, c)) for g in zip(*(n.gates for n in nets))]
    for blocks, gate in zip(zip(*(n.blocks for n in nets)), gates, strict=True):
        first_act, _, second_act, _ = blocks[0]
        u = _linear([b[1] for b in blocks], first_act(h))
        u = _linear([b[3] for b in blocks], second_act(u))
        h = h + u if gate is None else torch.addcmul(h, u, gate)
    return h


def _linear(layers: Sequence[nn.Linear], x: Tensor) -> Tensor:
    """Each member's layer on its rows x (K, B, in): (K, B, out)."""
    weight = torch.stack([layer.weight for layer in layers])
    bias = torch.stack([layer.bias for layer in layers])
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


__all__ = ["stackable", "stacked_forward"]
