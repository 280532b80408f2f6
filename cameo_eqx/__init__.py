"""cameo_eqx: coarse-grained protein force fields in JAX + equinox (see the README for the tour)."""

__version__ = "0.1.0"
