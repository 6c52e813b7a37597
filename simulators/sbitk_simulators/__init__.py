"""sbitk's built-in simulators: the sbibm benchmark tasks (Lueckmann et al. 2021).

Reference: arXiv:2101.04653.

Each module defines one task (two for ``gaussian_linear``) as an :class:`sbitk.Simulator`; they
reach sbitk through the ``sbitk.simulators`` entry points, like any third-party package, so
``sbitk.get_simulator("two_moons")`` finds them once this distribution is installed.
:mod:`sbitk_simulators.observations` holds the benchmark's observations and reference posteriors.
"""
