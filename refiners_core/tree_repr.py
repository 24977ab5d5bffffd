"""Readable tree printing of Chains: one line per layer, consecutive identical siblings folded."""

from __future__ import annotations

from torch import nn


def _is_chain(module: nn.Module) -> bool:
    from refiners_core.chain import Chain  # chain.py imports this module

    return isinstance(module, Chain)


def _label(module: nn.Module) -> str:
    extra = module.extra_repr()
    kind = "(CHAIN) " if _is_chain(module) else ""
    return f"{kind}{type(module).__name__}({extra})" if extra else f"{kind}{type(module).__name__}()"


def _lines(module: nn.Module) -> list[str]:
    lines = [_label(module)]
    children = list(module.named_children()) if _is_chain(module) else []
    # fold runs of structurally identical siblings into one entry with a count
    groups: list[tuple[str, str, list[str], int]] = []
    for name, child in children:
        body = _lines(child)
        if groups and groups[-1][2] == body:
            first, _, previous, count = groups[-1]
            groups[-1] = (first, name, previous, count + 1)
        else:
            groups.append((name, name, body, 1))
    for position, (first, last_name, body, count) in enumerate(groups):
        last = position == len(groups) - 1
        branch, pad = ("└── ", "    ") if last else ("├── ", "│   ")
        names = f"{first}..{last_name}" if count > 1 else first
        suffix = f" (x{count})" if count > 1 else ""
        lines.append(f"{branch}{names}: {body[0]}{suffix}")
        lines.extend(pad + line for line in body[1:])
    return lines


def tree_repr(module: nn.Module) -> str:
    """The tree of ``module`` as text: ``name: (CHAIN) Class(extra)`` lines joined by box-drawing branches."""
    return "\n".join(_lines(module))
