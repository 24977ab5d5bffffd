"""The ``refiners generate`` and ``refiners demo-assets`` commands (torch is imported only when they run)."""
