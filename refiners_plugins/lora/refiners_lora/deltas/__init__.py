"""The weight-delta contract and one small module per algorithm; :func:`build_delta` picks one."""

from __future__ import annotations
