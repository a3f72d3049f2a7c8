"""VJP rules, one per ONNX op type, registered in ``VJP_RULES`` on import."""

from __future__ import annotations

from . import elementwise, nn, quant, resize, shape  # noqa: F401  (importing registers the rules)
from .registry import BROADCASTING, VJP_RULES, supported_ops, vjp

__all__ = ["BROADCASTING", "VJP_RULES", "supported_ops", "vjp"]
