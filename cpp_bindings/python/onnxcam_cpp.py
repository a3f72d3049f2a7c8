"""The ctypes bindings of cpp_bindings, importable as ``onnxcam_cpp`` from this folder.

The module itself ships with the Python package as ``onnxcam.cpp``; this file re-exports it
for scripts that put ``cpp_bindings/python`` on ``sys.path``.
"""

from onnxcam.cpp import *  # noqa: F403
from onnxcam.cpp import LIB_ENV, Box, Params, library_candidates, load  # noqa: F401
