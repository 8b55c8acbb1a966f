"""Default fp32 parity tolerances of an export, in a module without torch so the CLI parser can show them.

Why both terms, ``|ort - torch| <= atol + rtol * |torch|``: see :mod:`onnx_export.validation`.
"""

DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-5
