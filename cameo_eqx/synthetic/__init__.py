"""Synthetic ground truth: datasets simulated with a transferable teacher potential whose right answer is
known (the teacher itself, an energy model like the priors, lives in `cameo_eqx.priors.teacher`)."""

from ..priors.teacher import TeacherPotential

__all__ = ["TeacherPotential"]
