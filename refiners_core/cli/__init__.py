"""The ``refiners`` command line: core commands plus the command groups plugins add through a hook.

Nothing here imports torch at module import time; ``refiners --help``, ``--version`` and
``refiners plugins`` stay fast.
"""
