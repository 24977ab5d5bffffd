"""The plugin system: hook specifications, descriptors and the plugin manager.

Public API (none of it imports torch):

- ``hookspec`` / ``hookimpl``: pluggy markers for project ``"refiners"``.
- ``AdapterFamily`` / ``BaseModelFamily``: what family hooks return.
- ``get_plugin_manager()``: the process-wide manager, loading entry points of group ``refiners`` once.
- ``reset_plugin_manager()``: forget it (tests, after installing a plugin).
- ``adapter_families()`` / ``base_model_families()``: ``{name: descriptor}`` merged over plugins
  (aliases included for adapter families).
- ``name_resolvers()``: every ``NameResolver`` (names that are not local paths -> local files).
- ``catalog_sources()``: every catalog source returned by ``refiners_catalog_entries``, as
  ``(plugin_name, source)`` pairs.
- ``plugin_reports()``: one ``PluginReport`` per discovered plugin, i.e. per entry point of group
  ``refiners`` (a distribution normally declares one), for ``refiners plugins``.
- ``register_commands(cli)``: let loaded plugins add command groups to a typer app (used by the CLI).
- ``RefinersPluginWarning``: the warning emitted for each skipped plugin or ignored contribution
  (``REFINERS_STRICT_PLUGINS=1`` raises ``PluginError`` instead).
"""

from refiners_core.plugins.descriptors import (
    TAKES_CONDITION_IMAGE,
    TAKES_NOTHING,
    TAKES_REFERENCE_IMAGE,
    AdapterFamily,
    BaseModelFamily,
    DemoAsset,
    NameResolver,
    Resolved,
    import_object,
)
from refiners_core.plugins.hookspecs import PROJECT_NAME, hookimpl, hookspec
from refiners_core.plugins.manager import (
    ENTRY_POINT_GROUP,
    PluginReport,
    RefinersPluginManager,
    adapter_families,
    base_model_families,
    catalog_sources,
    get_plugin_manager,
    name_resolvers,
    plugin_reports,
    register_commands,
    reset_plugin_manager,
)
from refiners_core.plugins.validation import RefinersPluginWarning

__all__ = [
    "ENTRY_POINT_GROUP",
    "PROJECT_NAME",
    "TAKES_CONDITION_IMAGE",
    "TAKES_NOTHING",
    "TAKES_REFERENCE_IMAGE",
    "AdapterFamily",
    "BaseModelFamily",
    "DemoAsset",
    "NameResolver",
    "Resolved",
    "PluginReport",
    "RefinersPluginManager",
    "RefinersPluginWarning",
    "adapter_families",
    "base_model_families",
    "catalog_sources",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "import_object",
    "name_resolvers",
    "plugin_reports",
    "register_commands",
    "reset_plugin_manager",
]
