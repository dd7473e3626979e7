"""Widgets of the compose screen."""
