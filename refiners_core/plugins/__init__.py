"""The plugin system: hook specifications, descriptors and the plugin manager.

Public API (none of it imports torch):

- ``hookspec`` / ``hookimpl``: pluggy markers for project ``"refiners"``.
- ``AdapterFamily`` / ``BaseModelFamily``: what family hooks return.
- ``get_plugin_manager()``: the process-wide manager, loading entry points of group ``refiners`` once.
- ``reset_plugin_manager()``: forget it (tests, after installing a plugin).
- ``adapter_families()`` / ``base_model_families()``: ``{name: descriptor}`` merged over plugins
  (aliases included for adapter families).
- ``catalog_sources()``: every catalog source returned by ``refiners_catalog_entries``, as
  ``(plugin_name, source)`` pairs.
- ``plugin_reports()``: one ``PluginReport`` per discovered distribution (for ``refiners plugins``).
"""

from refiners_core.plugins.descriptors import AdapterFamily, BaseModelFamily, import_object
from refiners_core.plugins.hookspecs import PROJECT_NAME, hookimpl, hookspec
from refiners_core.plugins.manager import (
    PluginReport,
    adapter_families,
    base_model_families,
    catalog_sources,
    get_plugin_manager,
    plugin_reports,
    reset_plugin_manager,
)

__all__ = [
    "PROJECT_NAME",
    "AdapterFamily",
    "BaseModelFamily",
    "PluginReport",
    "adapter_families",
    "base_model_families",
    "catalog_sources",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "import_object",
    "plugin_reports",
    "reset_plugin_manager",
]
