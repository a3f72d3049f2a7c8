"""The VJP rule registry: one rule per ONNX op type.

A rule has the signature ``rule(b, n, gy, need) -> list[str | None]``:

* ``b``    a ``NodeBuilder`` that names every node it emits ``<n>/grad/<k>``;
* ``n``    the forward ``NodeProto`` (read its attributes with ``attr(n, ...)``);
* ``gy``   one incoming gradient name per forward output, ``None`` where no gradient flows;
* ``need`` one flag per forward input: True where the walker needs that input's gradient.

It returns one gradient per forward input (``None`` where not needed). Cross-cutting work lives
in the walker (``export/autodiff.py``): fan-out accumulation, path pruning, and un-broadcasting
for the ops listed in ``BROADCASTING`` — rules of those ops return gradients at the output shape.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import onnx

from ..builder import NodeBuilder

Rule = Callable[[NodeBuilder, onnx.NodeProto, Sequence[str | None], Sequence[bool]], list]

VJP_RULES: dict[str, Rule] = {}

BROADCASTING: set[str] = set()
"""Ops whose input gradients the walker sums back down to each input's shape."""


def vjp(*op_types: str, broadcasting: bool = False) -> Callable[[Rule], Rule]:
    """Register ``fn`` as the VJP rule of ``op_types``."""

    def register(fn: Rule) -> Rule:
        for t in op_types:
            VJP_RULES[t] = fn
            if broadcasting:
                BROADCASTING.add(t)
        return fn

    return register


def supported_ops() -> list[str]:
    """Sorted op types that have a VJP rule."""
    return sorted(VJP_RULES)
