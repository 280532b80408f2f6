"""Synthetic ground truth: a transferable teacher potential and datasets simulated with it."""
