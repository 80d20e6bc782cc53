"""Which likelihood a task's training loss is the negative log of (for uncertainty weighting).

Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018) reads a task's loss ``L`` (a mean
over pixels) as a negative log-likelihood with a learned scale. Per pixel and up to
constants, every likelihood here has the form

    ``-log p = factor * exp(-s) * L + regulariser * s``

with ``s`` the learned log-scale. For a density ``exp(-rho(e) / b) / Z(b)`` whose loss
``rho`` is homogeneous of degree ``q`` in an error with ``d`` degrees of freedom per pixel,
``Z(b)`` is proportional to ``b^(d/q)``: the regulariser is ``d / q`` with ``s = log b``.
The factor only moves the optimum of ``s`` (``exp(s) = factor * L / regulariser``); at that
optimum the task's effective weight is ``regulariser / L`` whatever the factor, so the
regulariser is what balances the tasks. docs/balancing.md has the table per loss.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Likelihood:
    """One likelihood as uncertainty weighting uses it.

    Attributes:
        name: for docs and messages.
        factor: multiplies ``exp(-s) * L``.
        regulariser: multiplies ``s``.
        scale: what ``exp(s)`` is (e.g. the variance ``sigma^2``).
    """

    name: str
    factor: float
    regulariser: float
    scale: str


GAUSSIAN = Likelihood("Gaussian", 0.5, 0.5, "sigma^2")
"""Squared error, one value per pixel: ``L / (2 sigma^2) + log sigma``, ``s = log sigma^2``."""

LAPLACE = Likelihood("Laplace", 1.0, 1.0, "b")
"""Absolute error, one value per pixel: ``L / b + log b``, ``s = log b``."""

RADIAL_LAPLACE = Likelihood("radial Laplace", 1.0, 1.0, "b")
"""A norm of the error vector of an image (degree 1): ``exp(-rho / b)`` on the ``n``
log-depth errors of an image has ``Z ~ b^n``, i.e. ``log b`` per pixel; as Laplace."""

SOFTMAX = Likelihood("softmax", 1.0, 0.5, "sigma^2")
"""Kendall et al.'s softmax with temperature ``sigma^2``: ``L / sigma^2 + log sigma``."""

VON_MISES_FISHER = Likelihood("von Mises-Fisher", 1.0, 1.0, "1/kappa")
"""``1 - cos`` on the sphere: ``kappa (1 - cos) - log kappa`` for large ``kappa``
(the normaliser ``kappa / (4 pi sinh kappa)``), ``s = -log kappa``."""

LAPLACE_ON_SPHERE = Likelihood("Laplace on the sphere", 1.0, 2.0, "b")
"""Absolute component errors of a unit vector (degree 1, two degrees of freedom per
pixel, the tangent plane): ``L / b + 2 log b``, ``s = log b``."""
