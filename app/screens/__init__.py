"""Screens: Runs (home), Run detail, Compose, Compare, GPUs, Help, and the confirm dialog."""
