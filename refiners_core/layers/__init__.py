"""Leaf layers wrapping torch ops; every one is a ``refiners_core.Module`` and knows its parent."""
