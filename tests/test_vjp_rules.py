"""Every VJP rule against float64 finite differences, one row per op variant.

Each row of ``OP_CASES`` is a single-op model; ``gradcheck.check_case`` runs onnxcam's gradient
subgraph in onnxruntime and compares it with central differences from ``onnx.reference``.
Shape tuples are differentiated inputs, ndarrays are constant initializers, ``None`` leaves an
optional input out. Inputs stay small (≤ ~200 elements) because the differences loop over
every element.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from gradcheck import Case, check_case, gradient_model
from onnx import TensorProto, helper
from onnx.reference.ops import op_cast, op_conv_transpose, op_erf, op_pad

from onnxcam.errors import ExportError, UnsupportedOpError
from onnxcam.export.autodiff import build_backward
from onnxcam.export.graph import GraphView
from onnxcam.export.rules import VJP_RULES


def i64(*values: int) -> np.ndarray:
    """A 1-D int64 constant (axes, pads, starts, shapes ...)."""
    return np.asarray(values, dtype=np.int64)


def w(*shape: int, seed: int = 1) -> np.ndarray:
    """A fixed random float weight (constant initializer)."""
    return np.random.default_rng(seed).normal(size=shape)


def vec(*values: float) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


def scalar(v: float) -> np.ndarray:
    return np.asarray(v, dtype=np.float64)


I64_MAX = np.iinfo(np.int64).max
I64_MIN = np.iinfo(np.int64).min

# fmt: off
CONV_CASES = [
    Case("conv_s2_7x7_pad1", "Conv", [(1, 2, 7, 7), w(3, 2, 3, 3)],
         {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    Case("conv_s2_6x5", "Conv", [(1, 2, 6, 5), w(2, 2, 3, 3)], {"strides": [2, 2]}),
    Case("conv_s2_6x5_pad1", "Conv", [(1, 2, 6, 5), w(2, 2, 3, 3)],
         {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    Case("conv_s3_8x8_unreached_tail", "Conv", [(1, 2, 8, 8), w(2, 2, 3, 3)],
         {"strides": [3, 3]}),
    Case("conv_asym_pads_1001", "Conv", [(1, 2, 5, 5), w(2, 2, 3, 3)],
         {"pads": [1, 0, 0, 1]}),
    Case("conv_asym_pads_s2", "Conv", [(1, 2, 7, 6), w(2, 2, 3, 3)],
         {"strides": [2, 2], "pads": [0, 2, 1, 0]}),
    Case("conv_dilation2", "Conv", [(1, 2, 7, 7), w(2, 2, 3, 3)],
         {"dilations": [2, 2], "pads": [2, 2, 2, 2]}),
    Case("conv_dilation2_s2_nopad", "Conv", [(1, 2, 8, 7), w(2, 2, 3, 3)],
         {"dilations": [2, 2], "strides": [2, 2]}),
    Case("conv_group2", "Conv", [(1, 4, 5, 5), w(6, 2, 3, 3)],
         {"group": 2, "pads": [1, 1, 1, 1]}),
    Case("conv_depthwise_s2", "Conv", [(1, 3, 7, 6), w(3, 1, 3, 3)],
         {"group": 3, "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    Case("conv_depthwise_multiplier2", "Conv", [(1, 3, 5, 5), w(6, 1, 3, 3)],
         {"group": 3, "pads": [1, 1, 1, 1]}),
    Case("conv_same_upper_s2", "Conv", [(1, 2, 7, 6), w(2, 2, 3, 3)],
         {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
    Case("conv_same_upper_k4", "Conv", [(1, 2, 6, 5), w(2, 2, 4, 4)],
         {"auto_pad": "SAME_UPPER"}),
    Case("conv_same_lower_s2", "Conv", [(1, 2, 7, 6), w(2, 2, 3, 3)],
         {"auto_pad": "SAME_LOWER", "strides": [2, 2]}),
    Case("conv_same_lower_k4", "Conv", [(1, 2, 6, 5), w(2, 2, 4, 4)],
         {"auto_pad": "SAME_LOWER"}),
    # (onnxruntime rejects dilations together with SAME_UPPER/SAME_LOWER)
    Case("conv_same_lower_s2_rect_kernel", "Conv", [(1, 2, 7, 8), w(2, 2, 2, 3)],
         {"auto_pad": "SAME_LOWER", "strides": [2, 2]}),
    Case("conv_same_upper_s3_even_kernel", "Conv", [(1, 2, 8, 7), w(2, 2, 4, 2)],
         {"auto_pad": "SAME_UPPER", "strides": [3, 2]}),
    Case("conv_valid_s2", "Conv", [(1, 2, 7, 6), w(2, 2, 3, 3)],
         {"auto_pad": "VALID", "strides": [2, 2]}),
    Case("conv_1x1", "Conv", [(1, 3, 5, 4), w(4, 3, 1, 1)]),
    Case("conv_1x1_s2", "Conv", [(1, 3, 5, 5), w(4, 3, 1, 1)], {"strides": [2, 2]}),
    Case("conv_1d_s2", "Conv", [(1, 2, 9), w(3, 2, 3)], {"strides": [2], "pads": [1, 1]}),
    Case("conv_1d_dilation", "Conv", [(2, 2, 10), w(3, 2, 3)], {"dilations": [3]}),
    Case("conv_3d_s2", "Conv", [(1, 2, 4, 5, 3), w(2, 2, 2, 3, 2)],
         {"strides": [2, 1, 2], "pads": [0, 1, 1, 1, 1, 0]}),
    Case("conv_bias", "Conv", [(2, 2, 5, 5), w(3, 2, 3, 3), vec(0.5, -1.0, 2.0)],
         {"pads": [1, 1, 1, 1]}),
    Case("conv_batch2_rect_kernel", "Conv", [(2, 2, 5, 6), w(2, 2, 2, 3)],
         {"strides": [1, 2], "pads": [0, 1, 1, 0]}),
]

MAXPOOL_CASES = [
    Case("maxpool_3x3_s2_overlap", "MaxPool", [(1, 2, 7, 7)],
         {"kernel_shape": [3, 3], "strides": [2, 2]}, sampler="distinct"),
    Case("maxpool_ceil_mode", "MaxPool", [(1, 2, 6, 6)],
         {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, sampler="distinct"),
    Case("maxpool_pads", "MaxPool", [(1, 2, 6, 5)],
         {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
         sampler="distinct"),
    Case("maxpool_dilation2", "MaxPool", [(1, 2, 7, 7)],
         {"kernel_shape": [2, 2], "dilations": [2, 2]}, sampler="distinct"),
    Case("maxpool_2x2_s2", "MaxPool", [(2, 2, 4, 6)],
         {"kernel_shape": [2, 2], "strides": [2, 2]}, sampler="distinct"),
    Case("maxpool_1d", "MaxPool", [(1, 3, 9)],
         {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}, sampler="distinct"),
    Case("maxpool_same_upper", "MaxPool", [(1, 2, 5, 6)],
         {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"},
         sampler="distinct"),
]

AVGPOOL_CASES = [
    Case("avgpool_pads_exclude", "AveragePool", [(1, 2, 7, 7)],
         {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
          "count_include_pad": 0}),
    Case("avgpool_pads_include", "AveragePool", [(1, 2, 7, 7)],
         {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
          "count_include_pad": 1}),
    Case("avgpool_asym_pads_include", "AveragePool", [(1, 2, 6, 5)],
         {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 0, 0, 1],
          "count_include_pad": 1}),
    Case("avgpool_ceil_mode", "AveragePool", [(1, 2, 6, 6)],
         {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}),
    Case("avgpool_ceil_mode_pads_include", "AveragePool", [(1, 2, 6, 5)],
         {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1,
          "count_include_pad": 1}),
    Case("avgpool_ceil_mode_pads_exclude", "AveragePool", [(1, 2, 6, 5)],
         {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1,
          "count_include_pad": 0}),
    Case("avgpool_odd_rect", "AveragePool", [(1, 2, 5, 7)],
         {"kernel_shape": [2, 3], "strides": [2, 2]}),
    Case("avgpool_same_upper", "AveragePool", [(1, 2, 5, 6)],
         {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    Case("avgpool_same_lower", "AveragePool", [(1, 2, 5, 6)],
         {"kernel_shape": [2, 3], "strides": [2, 2], "auto_pad": "SAME_LOWER"}),
    Case("avgpool_dilation2_opset19", "AveragePool", [(1, 2, 7, 6)],
         {"kernel_shape": [2, 2], "dilations": [2, 2], "pads": [1, 0, 1, 1],
          "count_include_pad": 1}, opset=19),
    Case("avgpool_1d_pads", "AveragePool", [(1, 3, 9)],
         {"kernel_shape": [3], "strides": [2], "pads": [1, 1], "count_include_pad": 0}),
]

GLOBAL_POOL_CASES = [
    Case("global_average_pool", "GlobalAveragePool", [(2, 3, 4, 5)]),
    Case("global_average_pool_1d", "GlobalAveragePool", [(2, 3, 7)]),
    Case("global_max_pool", "GlobalMaxPool", [(2, 3, 4, 5)], sampler="distinct"),
]

REDUCE_CASES = [
    Case("reducemean_attr_keep1", "ReduceMean", [(2, 3, 4, 5)],
         {"axes": [2, 3], "keepdims": 1}),
    Case("reducemean_attr_keep0", "ReduceMean", [(2, 3, 4)], {"axes": [1], "keepdims": 0}),
    Case("reducemean_all_keep0", "ReduceMean", [(2, 3, 4)], {"keepdims": 0}),
    Case("reducemean_input_axes_opset18", "ReduceMean", [(2, 3, 4), i64(1, -1)],
         {"keepdims": 0}, opset=18),
    Case("reducemean_input_axes_opset18_keep1", "ReduceMean", [(2, 3, 4), i64(0)],
         {"keepdims": 1}, opset=18),
    Case("reducesum_input_keep1", "ReduceSum", [(2, 3, 4, 5), i64(1, 3)], {"keepdims": 1}),
    Case("reducesum_input_keep0", "ReduceSum", [(2, 3, 4), i64(-1)], {"keepdims": 0}),
    Case("reducesum_all", "ReduceSum", [(2, 3, 4), None], {"keepdims": 0}),
    Case("reducesum_noop_empty_axes", "ReduceSum", [(2, 3, 4), i64()],
         {"noop_with_empty_axes": 1}),
    Case("reducesum_empty_axes_reduce_all", "ReduceSum", [(2, 3, 4), i64()], {"keepdims": 1}),
    Case("reducemax_attr_keep0", "ReduceMax", [(2, 3, 4)], {"axes": [1], "keepdims": 0},
         sampler="distinct"),
    Case("reducemax_attr_keep1", "ReduceMax", [(2, 3, 4, 5)], {"axes": [2, 3], "keepdims": 1},
         sampler="distinct"),
    Case("reducemax_all", "ReduceMax", [(3, 4)], {"keepdims": 0}, sampler="distinct"),
    Case("reducemax_input_axes_opset18", "ReduceMax", [(2, 3, 4), i64(-1)],
         {"keepdims": 0}, sampler="distinct", opset=18),
    Case("reducemin_attr_keep1", "ReduceMin", [(2, 3, 4)], {"axes": [-1], "keepdims": 1},
         sampler="distinct"),
    Case("reducemin_attr_keep0", "ReduceMin", [(2, 3, 4)], {"axes": [0, 2], "keepdims": 0},
         sampler="distinct"),
]

LINALG_CASES = [
    Case("gemm_plain_bias", "Gemm", [(3, 4), w(4, 5), vec(0.1, 0.2, 0.3, 0.4, 0.5)]),
    Case("gemm_transB_alpha_beta", "Gemm", [(3, 4), w(5, 4), w(3, 5, seed=2)],
         {"transB": 1, "alpha": 0.7, "beta": 1.3}),
    Case("gemm_transA", "Gemm", [(4, 3), w(4, 5), w(1, 5, seed=2)],
         {"transA": 1, "alpha": 1.5}),
    Case("gemm_transA_transB", "Gemm", [(4, 3), w(5, 4), w(3, 1, seed=2)],
         {"transA": 1, "transB": 1, "alpha": 0.7, "beta": 0.5}),
    Case("gemm_no_C", "Gemm", [(3, 4), w(4, 5)], {"alpha": 2.0}),
    Case("gemm_no_C_transB", "Gemm", [(3, 4), w(5, 4)], {"transB": 1}),
    Case("gemm_diff_A_B", "Gemm", [(3, 4), (4, 5), vec(0.1, 0.2, 0.3, 0.4, 0.5)],
         {"alpha": 0.7}),
    Case("gemm_diff_A_B_transB", "Gemm", [(3, 4), (5, 4)], {"transB": 1, "alpha": 1.3}),
    Case("gemm_diff_A_B_transA_transB", "Gemm", [(4, 3), (5, 4), w(3, 5, seed=2)],
         {"transA": 1, "transB": 1, "alpha": 0.6, "beta": 2.0}),
    Case("gemm_diff_A_B_C_broadcast", "Gemm", [(3, 4), (4, 5), (1, 5)],
         {"alpha": 0.9, "beta": 1.7}),
    Case("gemm_diff_C_column", "Gemm", [(3, 4), w(4, 5), (3, 1)], {"beta": 0.5}),
    Case("gemm_diff_C_vector", "Gemm", [(3, 4), w(5, 4), (5,)], {"transB": 1}),
    Case("matmul_2d", "MatMul", [(3, 4), w(4, 5)]),
    Case("matmul_3d_batched_const_weight", "MatMul", [(2, 3, 4), w(4, 5)]),
    Case("matmul_2d_by_batched_const", "MatMul", [(3, 4), w(2, 4, 5)]),
    Case("matmul_both_broadcast_batch", "MatMul", [(2, 1, 3, 4), (3, 4, 2)]),
    Case("matmul_both_3d", "MatMul", [(2, 3, 4), (2, 4, 3)]),
]

NORM_CASES = [
    Case("batchnorm_inference", "BatchNormalization",
         [(2, 3, 4, 4), vec(0.5, 1.5, -2.0), vec(0.1, -0.2, 0.3), vec(0.2, -0.1, 0.0),
          vec(0.5, 1.0, 2.0)], {"epsilon": 1e-3}),
    Case("batchnorm_inference_2d", "BatchNormalization",
         [(4, 3), vec(0.5, 1.5, -2.0), vec(0.1, -0.2, 0.3), vec(0.2, -0.1, 0.0),
          vec(0.5, 1.0, 2.0)]),
    Case("batchnorm_inference_3d", "BatchNormalization",
         [(2, 3, 5), vec(0.5, 1.5, -2.0), vec(0.1, -0.2, 0.3), vec(0.2, -0.1, 0.0),
          vec(0.5, 1.0, 2.0)]),
    Case("layernorm_axis_last", "LayerNormalization",
         [(2, 3, 8), w(8), w(8, seed=2)], {"axis": -1}),
    Case("layernorm_axis1_4d", "LayerNormalization",
         [(2, 3, 2, 4), w(3, 2, 4), w(3, 2, 4, seed=2)], {"axis": 1}),
    # bias left out by length: a trailing "" input segfaults onnxruntime 1.31's LayerNorm
    Case("layernorm_axis1_3d_no_bias", "LayerNormalization",
         [(3, 4, 5), w(4, 5)], {"axis": 1, "epsilon": 1e-3}),
    Case("layernorm_axis0", "LayerNormalization", [(3, 4), w(3, 4), w(3, 4, seed=2)],
         {"axis": 0}),
    Case("softmax_axis1", "Softmax", [(2, 3, 4)], {"axis": 1}),
    Case("softmax_axis_last", "Softmax", [(2, 3, 4)], {"axis": -1}),
    Case("softmax_default_axis", "Softmax", [(3, 5)]),
    Case("logsoftmax_axis1", "LogSoftmax", [(2, 3, 4)], {"axis": 1}),
    Case("logsoftmax_axis_last", "LogSoftmax", [(2, 3, 4)], {"axis": -1}),
]

BINARY_CASES = [
    Case("add_bcast_3_1_1", "Add", [(2, 3, 4, 5), (3, 1, 1)]),
    Case("add_bcast_small_first", "Add", [(1, 3, 1, 1), (2, 3, 4, 5)]),
    Case("add_bcast_5", "Add", [(2, 3, 4, 5), (5,)]),
    Case("add_const_operand", "Add", [(2, 3, 4), w(3, 1)]),
    Case("sub_bcast_1_3_1_1", "Sub", [(2, 3, 4, 5), (1, 3, 1, 1)]),
    Case("sub_bcast_small_first", "Sub", [(5,), (2, 3, 4, 5)]),
    Case("sub_const_first", "Sub", [w(3, 4), (2, 3, 4)]),
    Case("mul_bcast_5", "Mul", [(2, 3, 4, 5), (5,)]),
    Case("mul_bcast_3_1_1", "Mul", [(2, 3, 4, 5), (3, 1, 1)]),
    Case("mul_bcast_both_ways", "Mul", [(2, 1, 4), (3, 1)]),
    Case("div_bcast_3_1_1", "Div", [(2, 3, 4, 5), (3, 1, 1)], sampler="positive"),
    Case("div_bcast_small_numerator", "Div", [(1, 3, 1, 1), (2, 3, 4, 5)], sampler="positive"),
    Case("div_bcast_5", "Div", [(2, 3, 4, 5), (5,)], sampler="positive"),
    Case("div_const_numerator", "Div", [w(3, 1), (2, 3, 4)], sampler="positive"),
    Case("pow_bcast_both", "Pow", [(2, 3, 4, 5), (3, 1, 1)], sampler="positive"),
    Case("pow_bcast_5_both", "Pow", [(2, 3, 4), (4,)], sampler="positive"),
    Case("pow_const_2", "Pow", [(2, 3, 4), scalar(2.0)]),
    Case("pow_const_3", "Pow", [(2, 3, 4), scalar(3.0)]),
    Case("pow_const_0_5", "Pow", [(2, 3, 4), scalar(0.5)], sampler="positive"),
    Case("pow_const_int64_3", "Pow", [(2, 3, 4), np.asarray(3, dtype=np.int64)]),
    Case("pow_const_vector", "Pow", [(2, 3, 4), vec(1.0, 2.0, 0.5, 3.0)], sampler="positive"),
    Case("pow_const_base", "Pow", [np.full((3, 1), 1.7), (2, 3, 4)]),
]

UNARY_CASES = [
    Case("sqrt", "Sqrt", [(3, 4, 5)], sampler="positive"),
    Case("relu", "Relu", [(3, 4, 5)], sampler="kinks:0"),
    Case("leaky_relu", "LeakyRelu", [(3, 4, 5)], {"alpha": 0.1}, sampler="kinks:0"),
    Case("leaky_relu_default_alpha", "LeakyRelu", [(3, 4, 5)], sampler="kinks:0"),
    Case("prelu_channel_slope", "PRelu", [(2, 3, 4, 4), w(3, 1, 1)], sampler="kinks:0"),
    Case("prelu_scalar_slope", "PRelu", [(3, 5), vec(0.25)], sampler="kinks:0"),
    Case("elu", "Elu", [(3, 4, 5)], {"alpha": 0.8}, sampler="kinks:0"),
    Case("elu_default", "Elu", [(3, 4, 5)], sampler="kinks:0"),
    Case("selu", "Selu", [(3, 4, 5)], sampler="kinks:0"),
    Case("selu_custom", "Selu", [(3, 4, 5)], {"alpha": 1.5, "gamma": 1.2}, sampler="kinks:0"),
    Case("softplus", "Softplus", [(3, 4, 5)]),
    Case("clip_relu6_inputs", "Clip", [(3, 4, 5), scalar(0.0), scalar(6.0)],
         sampler="kinks:0,6"),
    Case("clip_min_only", "Clip", [(3, 4, 5), scalar(-0.5)], sampler="kinks:-0.5"),
    Case("clip_max_only", "Clip", [(3, 4, 5), None, scalar(0.3)], sampler="kinks:0.3"),
    Case("clip_no_bounds", "Clip", [(3, 4)]),
    Case("sigmoid", "Sigmoid", [(3, 4, 5)]),
    Case("hard_sigmoid", "HardSigmoid", [(3, 4, 5)], sampler="kinks:-2.5,2.5"),
    Case("hard_sigmoid_custom", "HardSigmoid", [(3, 4, 5)], {"alpha": 0.5, "beta": 0.25},
         sampler="kinks:-0.5,1.5"),
    Case("hard_swish", "HardSwish", [(3, 4, 5)], sampler="kinks:-3,3"),
    Case("tanh", "Tanh", [(3, 4, 5)]),
    Case("erf", "Erf", [(3, 4, 5)]),
    Case("gelu_exact", "Gelu", [(3, 4, 5)], opset=20),
    Case("gelu_tanh", "Gelu", [(3, 4, 5)], {"approximate": "tanh"}, opset=20),
    Case("exp", "Exp", [(3, 4, 5)]),
    Case("log", "Log", [(3, 4, 5)], sampler="positive"),
    Case("reciprocal", "Reciprocal", [(3, 4, 5)], sampler="positive"),
    Case("abs", "Abs", [(3, 4, 5)], sampler="kinks:0"),
    Case("neg", "Neg", [(3, 4, 5)]),
]

NARY_CASES = [
    Case("sum_3_bcast", "Sum", [(2, 3, 4), (3, 4), (1, 4)]),
    Case("sum_with_const", "Sum", [(2, 3, 4), w(3, 1), (4,)]),
    Case("sum_single", "Sum", [(2, 3, 4)]),
    Case("mean_3_bcast", "Mean", [(2, 3, 4), (3, 4), (1, 4)]),
    Case("mean_2_same", "Mean", [(3, 4), (3, 4)]),
    Case("max_2_bcast", "Max", [(2, 3, 4), (3, 1)], sampler="distinct"),
    Case("max_3_same", "Max", [(3, 4), (3, 4), (3, 4)], sampler="distinct", seed=3),
    Case("min_2_bcast", "Min", [(2, 3, 4), (4,)], sampler="distinct"),
    Case("min_with_const", "Min", [(3, 4), w(3, 4)], sampler="distinct"),
    Case("where_const_cond", "Where",
         [np.random.default_rng(5).random((2, 3, 4)) > 0.5, (2, 3, 4), (2, 3, 4)]),
    Case("where_bcast_operands", "Where",
         [np.random.default_rng(5).random((3, 1)) > 0.5, (2, 3, 4), (4,)]),
    Case("where_const_y", "Where",
         [np.array([True, False, True, False]), (3, 4), w(3, 1)]),
    Case("where_cond_largest", "Where",
         [np.random.default_rng(6).random((2, 3, 4)) > 0.5, (3, 1), (4,)]),
]

SHAPE_CASES = [
    Case("expand", "Expand", [(3, 1), i64(2, 3, 4)]),
    Case("expand_rank_grow", "Expand", [(1, 4), i64(2, 3, 1, 4)]),
    Case("expand_noop", "Expand", [(2, 3), i64(2, 3)]),
    Case("flatten_axis2", "Flatten", [(2, 3, 2, 2)], {"axis": 2}),
    Case("flatten_default", "Flatten", [(2, 3, 4)]),
    Case("flatten_axis0", "Flatten", [(2, 3, 4)], {"axis": 0}),
    Case("reshape", "Reshape", [(2, 3, 4), i64(4, -1)]),
    Case("reshape_zero_dim", "Reshape", [(2, 3, 4), i64(0, 12)]),
    Case("squeeze_axes", "Squeeze", [(2, 1, 3, 1), i64(1, 3)]),
    Case("squeeze_all", "Squeeze", [(1, 3, 1, 4)]),
    Case("unsqueeze", "Unsqueeze", [(2, 3), i64(0, 2)]),
    Case("unsqueeze_negative", "Unsqueeze", [(2, 3), i64(-1)]),
    Case("transpose_perm", "Transpose", [(2, 3, 4)], {"perm": [2, 0, 1]}),
    Case("transpose_default", "Transpose", [(2, 3, 4)]),
    Case("transpose_4d_nhwc", "Transpose", [(2, 3, 2, 4)], {"perm": [0, 2, 3, 1]}),
    Case("concat_3_inputs_one_const", "Concat", [(2, 3, 4), w(2, 2, 4), (2, 1, 4)],
         {"axis": 1}),
    Case("concat_neg_axis_const_first", "Concat", [w(2, 3, 1), (2, 3, 2), (2, 3, 4)],
         {"axis": -1}),
    Case("split_sizes_input", "Split", [(2, 6, 3), i64(1, 2, 3)], {"axis": 1}, outputs=3),
    Case("split_equal", "Split", [(6, 4)], {"axis": 0}, outputs=3),
    Case("split_num_outputs_opset18", "Split", [(2, 3, 6)], {"axis": -1, "num_outputs": 3},
         outputs=3, opset=18),
    Case("slice_steps1", "Slice", [(4, 6), i64(1), i64(3), i64(0)]),
    Case("slice_steps2", "Slice", [(4, 6), i64(0), i64(6), i64(1), i64(2)]),
    Case("slice_steps2_offset", "Slice", [(4, 7), i64(1), i64(I64_MAX), i64(1), i64(2)]),
    Case("slice_negative_step", "Slice", [(4, 6), i64(-1), i64(I64_MIN), i64(1), i64(-1)]),
    Case("slice_negative_step2", "Slice", [(4, 6), i64(4), i64(0), i64(1), i64(-2)]),
    Case("slice_negative_starts_ends", "Slice", [(4, 6), i64(-3), i64(-1), i64(1)]),
    Case("slice_multi_axes", "Slice",
         [(3, 4, 5), i64(0, 1, -1), i64(3, 4, -6), i64(0, 1, 2), i64(2, 1, -2)]),
    Case("slice_multi_axes_no_axes", "Slice", [(3, 4, 5), i64(1, 0), i64(3, -1)]),
    Case("slice_end_past_dim", "Slice", [(4, 6), i64(2, 1), i64(100, 5), i64(-1, 0)]),
    Case("slice_empty", "Slice", [(4, 6), i64(3), i64(3), i64(1)]),
    Case("gather_scalar_index", "Gather", [(4, 3), np.asarray(1, dtype=np.int64)]),
    Case("gather_scalar_index_axis1", "Gather", [(2, 4, 3), np.asarray(-1, dtype=np.int64)],
         {"axis": 1}),
    Case("gather_dup_negative", "Gather", [(4, 3), i64(0, 2, 2, -1)]),
    Case("gather_2d_indices", "Gather", [(4, 3), np.asarray([[0, 1], [3, 0]], np.int64)]),
    Case("gather_axis1", "Gather", [(2, 4, 3), i64(3, 1, 1)], {"axis": 1}),
    Case("gather_2d_indices_axis1", "Gather",
         [(2, 4, 3), np.asarray([[0, -1], [2, 2]], np.int64)], {"axis": 1}),
    Case("gather_last_axis", "Gather", [(2, 3, 5), i64(4, 0, -2)], {"axis": -1}),
    Case("pad_constant_pos_neg", "Pad", [(3, 5), i64(1, -1, 2, 1)]),
    Case("pad_constant_value", "Pad", [(2, 3, 4), i64(0, 1, 0, 0, 2, -1), scalar(0.5)]),
    Case("pad_constant_axes_opset18", "Pad", [(2, 3, 4), i64(1, -1, 2, 1), None, i64(2, 0)],
         opset=18),
    Case("pad_reflect", "Pad", [(3, 5), i64(1, 2, 2, 1)], {"mode": "reflect"}),
    Case("pad_reflect_4d", "Pad", [(1, 2, 4, 4), i64(0, 0, 2, 1, 0, 0, 1, 3)],
         {"mode": "reflect"}),
    Case("pad_edge", "Pad", [(3, 5), i64(2, 1, 1, 3)], {"mode": "edge"}),
    Case("pad_edge_negative", "Pad", [(3, 5), i64(-1, 2, 1, -2)], {"mode": "edge"}),
    Case("pad_reflect_axes_opset18", "Pad", [(2, 3, 4), i64(2, 1, 1, 2), None, i64(-1, 1)],
         {"mode": "reflect"}, opset=18),
    Case("pad_wrap", "Pad", [(3, 5), i64(1, 2, 2, 4)], {"mode": "wrap"}, opset=19),
    Case("pad_wrap_beyond_dim", "Pad", [(3, 5), i64(4, 1, 3, 6)], {"mode": "wrap"}, opset=19),
    Case("identity", "Identity", [(3, 4)]),
    Case("dropout_inference", "Dropout", [(3, 4)]),
    Case("dropout_ratio_no_training", "Dropout", [(3, 4), scalar(0.3)]),
    # float -> float: the float64 twin keeps double (see float64_reference); float -> double
    # is checked by test_cast_gradient_returns_to_the_input_dtype
    Case("cast_to_float", "Cast", [(3, 4)], {"to": TensorProto.FLOAT}),
]
CONV_TRANSPOSE_CASES = [
    Case("convtranspose_plain", "ConvTranspose", [(1, 2, 3, 4), w(2, 3, 3, 3)]),
    Case("convtranspose_s2_pad1_outpad1", "ConvTranspose", [(1, 2, 3, 3), w(2, 2, 3, 3)],
         {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}),
    Case("convtranspose_s2_k2_unet_up", "ConvTranspose", [(2, 3, 3, 2), w(3, 2, 2, 2)],
         {"strides": [2, 2]}),
    Case("convtranspose_asym_pads_s3", "ConvTranspose", [(1, 2, 3, 4), w(2, 2, 3, 2)],
         {"strides": [3, 2], "pads": [0, 1, 2, 0], "output_padding": [2, 1]}),
    Case("convtranspose_dilation2", "ConvTranspose", [(1, 2, 4, 3), w(2, 2, 3, 3)],
         {"dilations": [2, 2], "pads": [1, 2, 1, 0]}),
    Case("convtranspose_group2", "ConvTranspose", [(1, 4, 3, 3), w(4, 3, 3, 3)],
         {"group": 2, "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    Case("convtranspose_depthwise", "ConvTranspose", [(1, 3, 4, 4), w(3, 1, 3, 3)],
         {"group": 3, "pads": [1, 1, 1, 1]}),
    Case("convtranspose_bias_valid", "ConvTranspose",
         [(1, 2, 3, 3), w(2, 3, 2, 2), vec(0.5, -1.0, 2.0)],
         {"auto_pad": "VALID", "strides": [2, 2]}),
    Case("convtranspose_1d_s2", "ConvTranspose", [(2, 2, 5), w(2, 3, 3)],
         {"strides": [2], "pads": [1, 0], "output_padding": [1]}),
    Case("convtranspose_3d", "ConvTranspose", [(1, 2, 2, 3, 2), w(2, 2, 2, 2, 2)],
         {"strides": [2, 1, 2], "pads": [0, 1, 1, 1, 0, 0]}),
]

def resize_attrs(mode: str, ctm: str, nearest_mode: str | None = None) -> dict:
    """Resize attributes: mode, coordinate transformation mode (and nearest mode)."""
    attrs = {"mode": mode, "coordinate_transformation_mode": ctm}
    return attrs if nearest_mode is None else {**attrs, "nearest_mode": nearest_mode}


RESIZE_CASES = [
    # torch's legacy exporter: F.interpolate(mode="nearest", scale_factor=2)
    Case("resize_nearest_asymmetric_floor_scales", "Resize",
         [(1, 2, 3, 4), None, vec(1, 1, 2, 2)],
         resize_attrs("nearest", "asymmetric", "floor")),
    Case("resize_nearest_asymmetric_floor_sizes_down", "Resize",
         [(1, 2, 6, 5), None, None, i64(1, 2, 3, 2)],
         resize_attrs("nearest", "asymmetric", "floor")),
    # mode="nearest-exact"
    Case("resize_nearest_half_pixel_round_prefer_floor_sizes", "Resize",
         [(1, 2, 3, 4), None, None, i64(1, 2, 5, 7)],
         resize_attrs("nearest", "half_pixel", "round_prefer_floor")),
    Case("resize_nearest_pytorch_half_pixel_round_prefer_ceil_down", "Resize",
         [(1, 2, 6, 5), None, None, i64(1, 2, 4, 2)],
         resize_attrs("nearest", "pytorch_half_pixel", "round_prefer_ceil")),
    Case("resize_nearest_align_corners_ceil", "Resize",
         [(1, 2, 3, 4), None, None, i64(1, 2, 5, 6)],
         resize_attrs("nearest", "align_corners", "ceil")),
    Case("resize_nearest_1d_scales", "Resize", [(2, 3, 4), None, vec(1, 1, 3)],
         resize_attrs("nearest", "asymmetric", "floor")),
    # bilinear, align_corners=False: pytorch_half_pixel (legacy) or half_pixel (dynamo)
    Case("resize_linear_pytorch_half_pixel_scales", "Resize",
         [(1, 2, 3, 4), None, vec(1, 1, 2, 2)],
         resize_attrs("linear", "pytorch_half_pixel")),
    Case("resize_linear_pytorch_half_pixel_to_1", "Resize",
         [(1, 2, 3, 4), None, None, i64(1, 2, 1, 3)],
         resize_attrs("linear", "pytorch_half_pixel")),
    Case("resize_linear_half_pixel_sizes_down", "Resize",
         [(1, 2, 5, 7), None, None, i64(1, 2, 3, 4)],
         resize_attrs("linear", "half_pixel")),
    Case("resize_linear_half_pixel_scale_1_5", "Resize",
         [(1, 2, 3, 4), None, vec(1, 1, 1.5, 1.25)], {"mode": "linear"}),
    Case("resize_linear_align_corners_sizes", "Resize",
         [(2, 2, 3, 4), None, None, i64(2, 2, 5, 6)],
         resize_attrs("linear", "align_corners")),
    Case("resize_linear_asymmetric_scales", "Resize",
         [(1, 2, 3, 4), None, vec(1, 1, 1.5, 2)],
         resize_attrs("linear", "asymmetric")),
    Case("resize_linear_half_pixel_symmetric_opset19", "Resize",
         [(1, 2, 3, 4), None, vec(1, 1, 1.5, 1.75)],
         resize_attrs("linear", "half_pixel_symmetric"),
         opset=19),
    Case("resize_linear_axes_opset18", "Resize", [(1, 2, 3, 4), None, vec(2, 1.5)],
         {"mode": "linear", "axes": [2, 3]}, opset=18),
    Case("resize_trilinear_5d", "Resize", [(1, 2, 2, 3, 2), None, vec(1, 1, 2, 1.5, 2)],
         resize_attrs("linear", "pytorch_half_pixel")),
    # bicubic: torch's A = -0.75
    Case("resize_cubic_align_corners", "Resize",
         [(1, 2, 3, 4), None, None, i64(1, 2, 5, 6)],
         {"mode": "cubic", "coordinate_transformation_mode": "align_corners",
          "cubic_coeff_a": -0.75}),
    Case("resize_cubic_pytorch_half_pixel", "Resize",
         [(1, 2, 4, 3), None, vec(1, 1, 1.5, 2)],
         {"mode": "cubic", "coordinate_transformation_mode": "pytorch_half_pixel",
          "cubic_coeff_a": -0.75}),
    Case("resize_cubic_half_pixel_exclude_outside", "Resize",
         [(1, 2, 5, 4), None, None, i64(1, 2, 3, 7)],
         {"mode": "cubic", "exclude_outside": 1}),
]

EINSUM_CASES = [
    Case("einsum_batched_matmul_both", "Einsum", [(2, 3, 4), (2, 4, 3)],
         {"equation": "bij,bjk->bik"}),
    Case("einsum_rel_pos_const_table", "Einsum", [(1, 2, 3, 4), w(2, 5, 4)],
         {"equation": "bhwc,hkc->bhwk"}),
    Case("einsum_attention_scores", "Einsum", [(2, 3, 4), (2, 5, 4)],
         {"equation": "bqd, bkd -> bqk"}),
    Case("einsum_own_label_summed", "Einsum", [(3, 4)], {"equation": "ij->i"}),
    Case("einsum_transpose", "Einsum", [(2, 3, 4)], {"equation": "bij->jbi"}),
    Case("einsum_implicit_output", "Einsum", [(3, 4), w(4, 2)], {"equation": "ij,jk"}),
    Case("einsum_ellipsis", "Einsum", [(2, 3, 4), w(4, 2)], {"equation": "...ij,jk->...ik"}),
    Case("einsum_ellipsis_both_operands", "Einsum", [(2, 3, 4), (2, 4, 2)],
         {"equation": "...ij,...jk->...ik"}),
    Case("einsum_three_operands", "Einsum", [(2, 3), (3, 4), w(4, 2)],
         {"equation": "ij,jk,kl->il"}),
    Case("einsum_dot_to_scalar", "Einsum", [(4,), (4,)], {"equation": "i,i->"}),
]

TILE_CASES = [
    Case("tile_2d", "Tile", [(2, 3), i64(2, 1)]),
    Case("tile_3d_all_axes", "Tile", [(1, 2, 3), i64(2, 3, 2)]),
    Case("tile_noop", "Tile", [(2, 3), i64(1, 1)]),
]

REDUCE_MORE_CASES = [
    Case("reducel2_attr_keep1", "ReduceL2", [(2, 3, 4)], {"axes": [-1], "keepdims": 1}),
    Case("reducel2_attr_keep0", "ReduceL2", [(2, 3, 4, 5)], {"axes": [2, 3], "keepdims": 0}),
    Case("reducel2_all", "ReduceL2", [(3, 4)], {"keepdims": 0}),
    Case("reducel2_input_axes_opset18", "ReduceL2", [(2, 3, 4), i64(1)], {"keepdims": 0},
         opset=18),
    # no axes + noop_with_empty_axes: ReduceL2 is |x| element-wise (onnxruntime and onnx.reference)
    Case("reducel2_noop_empty_axes_is_abs", "ReduceL2", [(3, 4), i64()],
         {"noop_with_empty_axes": 1, "keepdims": 0}, sampler="kinks:0", opset=18),
    Case("reducelogsumexp_noop_empty_axes", "ReduceLogSumExp", [(3, 4), i64()],
         {"noop_with_empty_axes": 1}, opset=18),
    Case("reducelogsumexp_attr_keep1", "ReduceLogSumExp", [(2, 3, 4)],
         {"axes": [1], "keepdims": 1}),
    Case("reducelogsumexp_attr_keep0", "ReduceLogSumExp", [(2, 3, 4)],
         {"axes": [0, 2], "keepdims": 0}),
    Case("reducelogsumexp_all", "ReduceLogSumExp", [(3, 4)], {"keepdims": 0}),
    Case("reducelogsumexp_input_axes_opset18", "ReduceLogSumExp", [(2, 3, 4), i64(-1)],
         {"keepdims": 1}, opset=18),
]

NORM_MORE_CASES = [
    Case("instancenorm_4d", "InstanceNormalization",
         [(2, 3, 3, 4), vec(0.5, 1.5, -2.0), vec(0.1, -0.2, 0.3)]),
    Case("instancenorm_3d_eps", "InstanceNormalization",
         [(2, 3, 5), vec(0.5, 1.5, -2.0), vec(0.1, -0.2, 0.3)], {"epsilon": 1e-3}),
    # torch's legacy GroupNorm: Reshape [N, G, -1] -> InstanceNormalization(ones) -> affine
    Case("instancenorm_grouped_view", "InstanceNormalization",
         [(2, 2, 12), vec(1.0, 1.0), vec(0.0, 0.0)]),
    # stash_type=11 (double): the float64 twin must not compute its moments in float32
    Case("groupnorm_per_channel_scale", "GroupNormalization",
         [(2, 6, 2, 3), w(6), w(6, seed=2)], {"num_groups": 3, "epsilon": 1e-3, "stash_type": 11},
         opset=21),
    Case("groupnorm_one_group", "GroupNormalization",
         [(2, 4, 3), w(4), w(4, seed=2)], {"num_groups": 1, "stash_type": 11}, opset=21),
    Case("groupnorm_group_per_channel", "GroupNormalization",
         [(1, 3, 2, 3), w(3), w(3, seed=2)], {"num_groups": 3, "stash_type": 11}, opset=21),
]
# fmt: on

OP_CASES: list[Case] = [
    *CONV_CASES,
    *MAXPOOL_CASES,
    *AVGPOOL_CASES,
    *GLOBAL_POOL_CASES,
    *REDUCE_CASES,
    *LINALG_CASES,
    *NORM_CASES,
    *BINARY_CASES,
    *UNARY_CASES,
    *NARY_CASES,
    *SHAPE_CASES,
    *CONV_TRANSPOSE_CASES,
    *RESIZE_CASES,
    *EINSUM_CASES,
    *TILE_CASES,
    *REDUCE_MORE_CASES,
    *NORM_MORE_CASES,
]


ORT_FAIL = ort.capi.onnxruntime_pybind11_state.Fail

KNOWN_BUGS: dict[str, str] = {}
"""Rows that expose a rule bug (strict xfail: they fail loudly once the rule is fixed)."""


def _params(cases: list[Case]) -> list:
    return [
        pytest.param(
            c,
            id=c.id,
            marks=[pytest.mark.xfail(reason=KNOWN_BUGS[c.id], raises=ORT_FAIL, strict=True)]
            if c.id in KNOWN_BUGS
            else [],
        )
        for c in cases
    ]


# --- float64 fixes to onnx.reference, the finite-difference oracle ----------------------------
_ORIGINAL_PAD_IMPL = op_pad._pad_impl
_ORIGINAL_CAST_TO = op_cast.cast_to
_ORIGINAL_CONV_TRANSPOSE = op_conv_transpose.ConvTranspose._run


def _erf_float64(self, x):
    # onnx.reference's Erf evaluates math.erf into float32 (otypes="f") whatever the input
    # dtype: its ~1e-8 rounding swamps h = 1e-6 central differences of Erf and of Gelu,
    # whose function body calls Erf.
    return (np.vectorize(math.erf, otypes=[x.dtype])(x),)


def _pad_impl_with_crop(data, raw_pads, mode, constant_values=0.0, axes=None):
    # onnx.reference's Pad hands negative pads to np.pad, which rejects them; ONNX defines a
    # negative pad as removing that many elements, so crop first and pad the rest.
    rank = data.ndim
    axes_n = list(range(rank)) if axes is None else [int(a) % rank for a in axes]
    pads = [int(p) for p in raw_pads]
    k = len(axes_n)
    index = [slice(None)] * rank
    for i, a in enumerate(axes_n):
        index[a] = slice(max(-pads[i], 0), data.shape[a] - max(-pads[k + i], 0))
    kept = [max(p, 0) for p in pads]
    return _ORIGINAL_PAD_IMPL(data[tuple(index)], kept, mode, constant_values, axes)


def _cast_keeping_double(x, to, *args, **kwargs):
    # The float64 twin of a float32 model keeps a float -> float Cast in double precision.
    if to == TensorProto.FLOAT and np.asarray(x).dtype == np.float64:
        return np.asarray(x)
    return _ORIGINAL_CAST_TO(x, to, *args, **kwargs)


def _conv_transpose_per_group(self, X, W, B=None, group=None, **attrs):
    # onnx.reference's grouped ConvTranspose slices W by output channels and writes one output
    # channel per group; a group is input channels [g·C/G, (g+1)·C/G) and the same rows of W.
    if not group or group == 1:
        return _ORIGINAL_CONV_TRANSPOSE(self, X, W, B, group=group, **attrs)
    parts = zip(np.split(X, group, axis=1), np.split(W, group, axis=0), strict=True)
    y = np.concatenate(
        [_ORIGINAL_CONV_TRANSPOSE(self, x, wg, None, group=1, **attrs)[0] for x, wg in parts],
        axis=1,
    )
    if B is not None:
        y = y + B.reshape(1, -1, *[1] * (y.ndim - 2))
    return (y.astype(X.dtype),)


@pytest.fixture
def float64_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(op_erf.Erf, "_run", _erf_float64)
    monkeypatch.setattr(op_pad, "_pad_impl", _pad_impl_with_crop)
    monkeypatch.setattr(op_cast, "cast_to", _cast_keeping_double)
    monkeypatch.setattr(op_conv_transpose.ConvTranspose, "_run", _conv_transpose_per_group)


@pytest.mark.parametrize("case", _params(OP_CASES))
@pytest.mark.usefixtures("float64_reference")
def test_rule_matches_finite_differences(case: Case) -> None:
    assert case.rtol <= 1e-3, f"{case.id}: rtol above the 1e-3 ceiling"
    # check_case folds its errors with max(), which drops NaN: check finiteness first
    model, feeds, names = gradient_model(case)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for name, g in zip(names, sess.run(names, feeds), strict=True):
        assert np.isfinite(g).all(), f"{case.id}: non-finite gradient in {name!r}"
    err = check_case(case)
    assert err["fd"] <= case.rtol, f"{case.id}: finite-difference error {err}"
    assert err["dot"] <= case.rtol, f"{case.id}: dot-product error {err}"


STRAIGHT_THROUGH = {
    "QuantizeLinear": "tests/test_edge_models.py::test_straight_through_gradient_of_a_qdq_pair",
    "DequantizeLinear": "tests/test_edge_models.py::test_straight_through_gradient_of_a_qdq_pair",
}
"""Rules that are not the derivative of their op (rounding has none): a finite difference
cannot check them; their definition is checked where named."""


def test_every_rule_has_a_case() -> None:
    ids = [c.id for c in OP_CASES]
    assert len(ids) == len(set(ids)), "duplicate case ids"
    covered = {c.op for c in OP_CASES} | set(STRAIGHT_THROUGH)
    missing = sorted(set(VJP_RULES) - covered)
    assert not missing, f"VJP rules without a row in OP_CASES: {', '.join(missing)}"
    unknown = sorted(covered - set(VJP_RULES))
    assert not unknown, f"OP_CASES rows for ops without a VJP rule: {', '.join(unknown)}"


def test_missing_rule_names_op_node_and_supported_ops() -> None:
    op = "Sin"
    assert op not in VJP_RULES
    shape = [2, 3]
    f = TensorProto.FLOAT
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="before"),
        helper.make_node(op, ["a"], ["b"], name="the_unsupported_node"),
        helper.make_node("Neg", ["b"], ["y"], name="after"),
    ]
    graph = helper.make_graph(
        nodes,
        "missing_rule",
        [
            helper.make_tensor_value_info("x", f, shape),
            helper.make_tensor_value_info("seed", f, shape),
        ],
        [helper.make_tensor_value_info("y", f, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    view = GraphView(model)
    with pytest.raises(UnsupportedOpError) as info:
        build_backward(view, {"y": "seed"}, ["x"])
    msg = str(info.value)
    assert op in msg
    assert "the_unsupported_node" in msg
    for supported in ("Conv", "MatMul", "Relu", "Softmax", "Gather"):
        assert supported in msg, f"supported op {supported!r} not listed in: {msg}"


REPRESENTATIVE = [
    "conv_depthwise_s2",
    "conv_same_lower_k4",
    "maxpool_ceil_mode",
    "avgpool_pads_exclude",
    "reducemean_input_axes_opset18",
    "gemm_diff_A_B_transA_transB",
    "matmul_both_broadcast_batch",
    "layernorm_axis1_4d",
    "add_bcast_3_1_1",
    "pow_const_0_5",
    "gelu_tanh",
    "split_sizes_input",
    "slice_negative_step2",
    "gather_2d_indices_axis1",
    "pad_wrap",
    "convtranspose_group2",
    "resize_cubic_half_pixel_exclude_outside",
    "resize_trilinear_5d",
    "einsum_ellipsis",
    "tile_3d_all_axes",
    "reducelogsumexp_input_axes_opset18",
    "groupnorm_per_channel_scale",
]


@pytest.mark.parametrize("case_id", REPRESENTATIVE)
def test_emitted_nodes_are_default_domain_only(case_id: str) -> None:
    case = next(c for c in OP_CASES if c.id == case_id)
    model, _, _ = gradient_model(case)
    domains = {(n.op_type, n.domain) for n in model.graph.node if n.domain not in ("", "ai.onnx")}
    assert not domains, f"{case_id}: nodes outside the default domain: {sorted(domains)}"
    default = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    assert default, f"{case_id}: no default-domain opset import"
    assert default[0] >= 17
    assert all(o.domain in ("", "ai.onnx") for o in model.opset_import)
    onnx.checker.check_model(model, full_check=True)


def test_cast_gradient_returns_to_the_input_dtype() -> None:
    # y = Cast(x: float, to=double): the gradient arrives in double and must leave in float
    f, d = TensorProto.FLOAT, TensorProto.DOUBLE
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], name="to_double", to=d)],
        "cast",
        [
            helper.make_tensor_value_info("x", f, [3, 4]),
            helper.make_tensor_value_info("s", d, [3, 4]),
        ],
        [helper.make_tensor_value_info("y", d, [3, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    view = GraphView(model)
    gx = build_backward(view, {"y": "s"}, ["x"])["x"]
    model.graph.output.append(helper.make_tensor_value_info(gx, f, [3, 4]))
    onnx.checker.check_model(model, full_check=True)
    rng = np.random.default_rng(0)
    feeds = {"x": rng.normal(size=(3, 4)).astype(np.float32), "s": rng.normal(size=(3, 4))}
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = sess.run([gx], feeds)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, feeds["s"].astype(np.float32))


def test_slice_negative_step_clamps_start_like_onnxruntime() -> None:
    """starts=-10, steps=-1 on a dim of 6 reads one element in ONNX (start clamps to 0);
    onnx.reference slices like Python and reads none, so this row is checked against ORT."""
    case = Case("slice_clamp", "Slice", [(4, 6), i64(-10), i64(-100), i64(1), i64(-1)])
    model, feeds, (grad,) = gradient_model(case)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y, g = sess.run(["y0", grad], feeds)
    assert y.shape == (4, 1)
    np.testing.assert_array_equal(y[:, 0], feeds["x0"][:, 0])
    want = np.zeros((4, 6), np.float32)
    want[:, 0] = feeds["seed0"][:, 0]
    np.testing.assert_array_equal(g, want)


def test_group_norm_opset18_scales_per_group(monkeypatch: pytest.MonkeyPatch) -> None:
    """GroupNormalization-18 (deprecated in 21, so onnx.checker refuses it) scales per group;
    onnxruntime still runs it. Its row is checked here with the checker switched off."""
    monkeypatch.setattr(onnx.checker, "check_model", lambda *args, **kwargs: None)
    case = Case(
        "groupnorm_opset18",
        "GroupNormalization",
        [(2, 4, 3, 3), vec(0.5, -1.5), vec(0.1, 0.2)],
        {"num_groups": 2},
        opset=18,
    )
    err = check_case(case)
    assert err["fd"] <= case.rtol and err["dot"] <= case.rtol, err


REFUSED = [
    (
        Case(
            "resize_tf_crop_and_resize",
            "Resize",
            [(1, 2, 3, 4), vec(0, 0, 0, 0, 1, 1, 1, 1), None, i64(1, 2, 5, 6)],
            resize_attrs("linear", "tf_crop_and_resize"),
        ),
        "tf_crop_and_resize",
    ),
    (
        Case(
            "resize_antialias",
            "Resize",
            [(1, 2, 6, 6), None, vec(1, 1, 0.5, 0.5)],
            {"mode": "linear", "antialias": 1},
            opset=18,
        ),
        "antialias",
    ),
    (Case("einsum_diagonal", "Einsum", [(3, 3)], {"equation": "ii->i"}), "repeated subscripts"),
    (
        Case(
            "einsum_broadcast_ellipsis",
            "Einsum",
            [(2, 3, 4), (1, 4, 2)],
            {"equation": "...ij,...jk->...ik"},
        ),
        "broadcast",
    ),
    (
        Case(
            "convtranspose_same_upper",
            "ConvTranspose",
            [(1, 2, 3, 3), w(2, 2, 3, 3)],
            {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
        ),
        "auto_pad=SAME_UPPER",
    ),
]


@pytest.mark.parametrize(("case", "words"), REFUSED, ids=[c.id for c, _ in REFUSED])
def test_unsupported_variant_is_refused_by_name(case: Case, words: str) -> None:
    with pytest.raises(ExportError, match=words):
        gradient_model(case)


def _edge_values(bounds: list[float]) -> np.ndarray:
    """float32 inputs at and next to each bound, plus 0, the smallest normal, huge values.
    Not subnormals: a ReLU output in (0, 2⁻¹²⁶) gets the mask 2¹²⁷·y < 1 (``_step``'s one
    documented inexact case)."""
    f32 = np.float32
    values = [0.0, -0.0, 1.0, -1.0, 3e38, -3e38, np.finfo(f32).tiny, -np.finfo(f32).tiny, 1e-30]
    for b in bounds:
        b = f32(b)
        up, down = np.nextafter(b, f32(np.inf)), np.nextafter(b, f32(-np.inf))
        values += [b] + [v for v in (up, down) if v == 0 or abs(v) >= np.finfo(f32).tiny]
        values += [b + f32(1e-3), b - f32(1e-3), b / f32(2) if b else f32(0.5)]
    return np.asarray(values, dtype=f32)


@pytest.mark.parametrize(
    ("op", "bounds", "rules"),
    [
        ("Relu", [0.0], None),
        ("Clip", [0.0, 6.0], None),
        ("Clip", [-0.5, 0.3], None),
        ("Clip", [None, 1e-20], None),
        ("Clip", [-7e30, None], None),
        ("Relu", [0.0], "guided"),
        ("Clip", [0.0, 6.0], "guided"),
        ("Relu", [0.0], "deconvnet"),
        ("Clip", [0.0, 6.0], "deconvnet"),
    ],
)
def test_rectifier_masks_are_exact_at_the_bounds(op: str, bounds: list, rules: str | None) -> None:
    # The float32 masks are HardSigmoid steps (elementwise._step), exact by construction of
    # their scale: at a bound and one ulp either side the gradient must be g or 0 exactly,
    # torch's convention (ReLU6 passes gradient strictly inside (min, max)).
    from onnxcam.export.rules import RULE_SETS

    finite = [b for b in bounds if b is not None]
    x = _edge_values(finite or [0.0])
    lo, hi = [*bounds, None, None][:2] if op == "Clip" else (0.0, None)
    inputs, inits = ["x"], []
    if op == "Clip":
        for k, v in (("lo", lo), ("hi", hi)):
            if v is None:
                inputs.append("")
            else:
                inputs.append(k)
                inits.append(helper.make_tensor(k, TensorProto.FLOAT, [], [v]))
    g = np.where(np.arange(x.size) % 2 == 0, 1.5, -2.25).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node(op, inputs, ["y"])],
        "edge",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [x.size]) for n in ("x", "g")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [x.size])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    view = GraphView(model)
    grads = build_backward(view, {"y": "g"}, ["x"], rules=RULE_SETS.get(rules or ""))
    model.graph.output.append(helper.make_tensor_value_info(grads["x"], TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run([grads["x"]], {"x": x, "g": g})[0]

    y = np.clip(x, lo, hi) if op == "Clip" else np.maximum(x, 0)
    inside = np.ones(x.shape, bool)
    if lo is not None:
        inside &= y > np.float32(lo)
    if hi is not None:
        inside &= y < np.float32(hi)
    if rules == "guided":
        want = np.where(inside & (g > 0), g, 0)
    elif rules == "deconvnet":
        cap = y < np.float32(hi) if hi is not None else np.ones(x.shape, bool)
        want = np.where(cap, np.maximum(g, 0), 0)
    else:
        want = np.where(inside, g, 0)
    assert np.array_equal(got, want.astype(np.float32)), np.stack([x, got, want])[:, got != want]
    if rules is None or (op, rules) == ("Relu", "guided") or finite == [0.0, 6.0]:
        assert "HardSigmoid" in {n.op_type for n in model.graph.node}, "the step path was not taken"
