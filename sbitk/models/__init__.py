"""The generative model suite.

Every model is an ``nn.Module`` with one training contract, ``loss(inputs, context) ->
Tensor[batch]``, and ``model(context)`` returning a distribution-like object with ``sample``,
``rsample`` and, where tractable, ``log_prob``. Normalizing flows live in
:mod:`sbitk.models.flows` (``FLOWS`` names them). Submodules are imported on use, so importing
this package stays cheap.
"""
