"""Widgets of the detail screen."""
