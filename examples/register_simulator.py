"""Register your own simulator with a decorator and simulate it with two worker processes.

Run it with ``python examples/register_simulator.py``. It writes a bank to
``runs/examples/pendulum.zarr`` and prints its summary; running it again resumes (or, once the
bank is complete, does nothing), and ``sbitk inspect runs/examples/pendulum.zarr`` shows it too.

The simulator here is a plain, non-vectorized Python function: one θ in, one x out. sbitk runs
it row by row, in parallel across batches, and sends it to the worker processes with cloudpickle.
Every random number comes from the ``generator`` argument, so a seed fixes the whole bank.
"""

from __future__ import annotations

import math

import torch

import sbitk


@sbitk.simulator(
    "damped_pendulum",
    parameters={
        "length": sbitk.LogNormal(0.0, 0.3),  # metres
        "damping": sbitk.BoxUniform(0.0, 0.5),  # 1/s
    },
    outputs={"angle": (8,)},
    vectorized=False,
)
def damped_pendulum(theta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Angle of a damped pendulum at t = 0.5, 1.0, ..., 4.0 s, measured with noise.

    Released from rest at 0.3 rad; small-angle solution, measurement noise 0.02 rad.
    """
    length, damping = float(theta[0]), float(theta[1])
    omega2 = 9.81 / length - damping**2
    if omega2 <= 0:
        # Overdamped: outside this model. Not reached under these priors, but if it were, the
        # row would be recorded as a failure and the run would go on.
        raise ValueError(f"overdamped pendulum (length={length:.3g}, damping={damping:.3g})")
    omega = math.sqrt(omega2)
    times = [0.5 * (k + 1) for k in range(8)]
    angle = torch.tensor([0.3 * math.exp(-damping * t) * math.cos(omega * t) for t in times])
    return angle + 0.02 * torch.randn(8, generator=generator)


if __name__ == "__main__":
    # The guard matters: worker processes import this file, and must not start simulating too.
    bank = sbitk.simulate(
        "damped_pendulum",  # by registered name; passing `damped_pendulum` itself works too
        4000,
        seed=0,
        workers=2,
        batch_size=500,
        bank="runs/examples/pendulum.zarr",
    )
    print(bank.summary())
    theta, x = bank.theta[bank.valid], bank.x[bank.valid]
    print(f"{len(theta)} valid rows; x[0] of the first: {x[0].tolist()}")
