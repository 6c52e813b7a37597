"""A known conditional mixture and a short, seeded fit of an estimator's loss, shared by the
model tests."""

import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal


def conditional_mixture(c: torch.Tensor) -> MixtureSameFamily:
    """A 2-D mixture of two correlated Gaussians whose weights and means move with c (N, 1)."""
    c = c[:, 0]
    w = torch.sigmoid(2 * c)
    loc = torch.stack(
        [torch.stack([c, 1 + 0.5 * c], -1), torch.stack([-c, -torch.ones_like(c)], -1)], -2
    )
    tril = torch.tensor(
        [[[0.5, 0.0], [0.3, 0.4]], [[0.3, 0.0], [-0.2, 0.6]]], dtype=c.dtype
    ).expand(c.shape[0], 2, 2, 2)
    return MixtureSameFamily(
        Categorical(probs=torch.stack([w, 1 - w], -1)), MultivariateNormal(loc, scale_tril=tril)
    )


def conditional_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n rows (a, c) of :func:`conditional_mixture`, c uniform on [-2, 2]."""
    g = torch.Generator().manual_seed(seed)
    c = torch.rand(n, 1, generator=g) * 4 - 2
    torch.manual_seed(seed)
    return conditional_mixture(c).sample(), c


def train(model, a, c, steps: int, seed: int, lr: float = 3e-3, batch: int = 256):
    """Adam on random batches with a cosine-decayed rate; the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    model.fit_standardization(a, c)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        rows = torch.randint(a.shape[0], (batch,), generator=g)
        opt.zero_grad()
        model.loss(a[rows], None if c is None else c[rows]).mean().backward()
        opt.step()
        schedule.step()
    return model.eval()
