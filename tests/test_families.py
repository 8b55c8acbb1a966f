"""Tiny models of more decoder families (the paper's and a few others): truncation parity and ONNX export.

The five families of conftest.FAMILIES run through every test; these eight run through the two properties
that depend on the architecture: truncated vectors equal pooling the full model (final norm found, inputs
the backbone takes), and the ONNX export validates against PyTorch on every grid.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import MORE_DECODER_FAMILIES, SENTENCES, reference_embeddings
from lafusion_st import build_fused_model
from onnx_export import ORTFusedEncoder, export

LAYERS = [1, 3]  # of 4: the backbone keeps 3 layers and drops its final norm


@pytest.mark.parametrize("family", MORE_DECODER_FAMILIES)
def test_truncated_vectors_equal_the_full_model_and_export_matches(more_tiny_models, family, tmp_path) -> None:
    folder = more_tiny_models(family)
    model = build_fused_model(folder, layers=LAYERS, pooling="mean", max_seq_length=32)
    assert model[0].num_layers == 3
    encoded = model.encode(SENTENCES)
    np.testing.assert_allclose(encoded, reference_embeddings(folder, LAYERS, "mean"), atol=1e-5)
    exported = export(model, tmp_path / "onnx")  # raises ParityError unless fp32 matches on every grid
    observed = ORTFusedEncoder(exported, provider="cpu").encode(SENTENCES)
    np.testing.assert_allclose(observed, encoded, atol=1e-4)
