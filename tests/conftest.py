"""Shared pytest fixtures. ``make_plugin_dist`` builds real plugin distributions (see tests/plugin_fixtures.py)."""

from plugin_fixtures import make_plugin_dist  # noqa: F401
