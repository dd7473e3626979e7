"""Minitron pruning: importance (calibration), depth and width pruning, target checks.

`shapes` and `targets` are torch-free (used by `check` and the TUI); the rest needs torch.
"""
