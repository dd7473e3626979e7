"""Widgets of the Runs (home) screen."""
