"""Template files of ``refiners plugin new`` (``*.tmpl``; ``__package__`` in a path is the plugin's package)."""
