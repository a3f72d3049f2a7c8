"""VJP rules, one per ONNX op type, registered in ``VJP_RULES`` on import."""

from __future__ import annotations

from . import elementwise, nn, quant, resize, shape  # noqa: F401  (importing registers the rules)
from .elementwise import RELU_RULES as RULE_SETS
from .registry import BROADCASTING, VJP_RULES, supported_ops, vjp

__all__ = ["BROADCASTING", "RULE_SETS", "VJP_RULES", "supported_ops", "vjp"]
