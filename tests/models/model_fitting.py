"""A short, seeded fit of an estimator's loss, shared by the model tests."""

import torch


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
