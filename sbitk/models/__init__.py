"""The generative model suite, every family behind one estimator contract.

:mod:`sbitk.models.contract` writes the contract down (``config``, ``from_config``,
``loss(inputs, context) -> (B,)``, ``model(context)`` a distribution with ``sample``, a declared
density kind, and the optional capabilities); :mod:`sbitk.models.registry` finds estimators by
name, from a decorator or the entry-point group ``sbitk.estimators``. The families: normalizing
flows (:mod:`sbitk.models.flows`), a conditional Gaussian (:mod:`~sbitk.models.gaussian`), the
conditional VAE (:mod:`~sbitk.models.latent`), the conditional GAN
(:mod:`~sbitk.models.adversarial`) and flow matching (:mod:`~sbitk.models.continuous`, on the ODE
solvers of :mod:`~sbitk.models.ode`); :mod:`~sbitk.models.divergences` holds the distances that
train and judge them. Submodules are imported on use, so importing this package stays cheap.
"""
