"""Tokenization for ONNX Runtime with the ``tokenizers`` library alone, matching the PyTorch embedder.

Why not ``transformers``: the deployed encoder must run where only onnxruntime, numpy and tokenizers are
installed. A Hugging Face *fast* tokenizer is a ``tokenizers.Tokenizer`` plus call-time settings; those
settings (padding side, pad id, truncation to ``max_seq_length``, which inputs the model takes) are read
from the manifest and applied here, and so is :class:`~lafusion_st.modules.TruncatedTransformer`'s rule
that a text the tokenizer turns into zero tokens (such as the empty string) is encoded as its BOS/EOS token.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

logger = logging.getLogger(__name__)


class MemberTokenizer:
    """Turns texts into the int64 arrays one member graph takes.

    Args:
        path: The exported ``tokenizer.json``.
        spec: The member's ``tokenizer`` entry of the manifest.
        inputs: Graph input names (``input_ids``, ``attention_mask`` and, if the model takes them,
            ``token_type_ids``).
    """

    def __init__(self, path: str | Path, spec: dict[str, Any], inputs: list[str]) -> None:
        self.tokenizer = Tokenizer.from_file(str(path))
        self.tokenizer.enable_truncation(
            spec["max_seq_length"], strategy="longest_first", direction=spec["truncation_side"]
        )
        self.tokenizer.enable_padding(
            direction=spec["padding_side"],
            pad_id=spec["pad_token_id"],
            pad_type_id=spec["pad_token_type_id"],
            pad_token=spec["pad_token"],
        )
        self.max_seq_length = int(spec["max_seq_length"])
        self.empty_text_substitute: str | None = spec["empty_text_substitute"]
        self.inputs = list(inputs)
        self._warned_truncation = False

    def __call__(self, texts: list[str], prompt: str | None = None) -> dict[str, np.ndarray]:
        """Graph inputs for ``texts``; ``prompt`` is prepended after the empty-text rule, as in PyTorch."""
        if self.empty_text_substitute is not None:
            lengths = [sum(encoding.attention_mask) for encoding in self.tokenizer.encode_batch(texts)]
            texts = [
                text if length else self.empty_text_substitute for text, length in zip(texts, lengths, strict=True)
            ]
        if prompt:
            texts = [prompt + text for text in texts]
        encodings = self.tokenizer.encode_batch(texts)
        if not self._warned_truncation and any(encoding.overflowing for encoding in encodings):
            self._warned_truncation = True
            logger.warning(
                "Some texts are longer than max_seq_length=%d tokens and were truncated to it "
                "(said once per model; re-export with a larger max_seq_length to keep more).",
                self.max_seq_length,
            )
        fields = {
            "input_ids": [encoding.ids for encoding in encodings],
            "attention_mask": [encoding.attention_mask for encoding in encodings],
            "token_type_ids": [encoding.type_ids for encoding in encodings],
        }
        return {name: np.asarray(fields[name], dtype=np.int64) for name in self.inputs}
