"""lafusion_st.lazy: the PEP 562 exports of lafusion_st, lafusion_st.heads and onnx_export."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("package", ["lafusion_st", "lafusion_st.heads", "onnx_export"])
def test_lazy_names_are_listed_resolved_and_unknown_ones_refused(package: str) -> None:
    module = importlib.import_module(package)
    listed = dir(module)
    assert set(module.__all__) <= set(listed) and "__all__" in listed and listed == sorted(listed)
    for name in module.__all__:
        assert getattr(module, name) is not None
    with pytest.raises(AttributeError, match=rf"module '{package}' has no attribute 'nope'"):
        module.nope  # noqa: B018
