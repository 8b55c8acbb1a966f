"""Build a Hugging Face tokenizer from the tokenizer metadata of a GGUF file.

Why not ``AutoTokenizer.from_pretrained(dir, gguf_file=...)``: transformers 4.57's GGUF conversion
gets both of our offline models wrong.

* SentencePiece-BPE vocabularies (``tokenizer.ggml.model == "llama"``, e.g. Gemma 3) are stored as
  llama.cpp runs them: pieces with scores that are merge priorities, no merges list. For the
  Gemma architectures transformers builds a *Unigram* model from those scores, which favours
  short pieces ("the movie" -> ``the ▁m ov ie`` although ``▁movie`` is in the vocabulary) and
  doubles the token count of our texts (https://github.com/huggingface/transformers/issues/41494;
  the fix, PR #41609, was closed unmerged).
* For the llama architecture it swaps BOS and EOS and ignores ``add_bos_token`` and
  ``padding_token_id`` (SmolLM2 came out with EOS ``<|im_start|>``, a BOS added to every text and
  no pad token, while the file says EOS ``<|im_end|>``, pad ``<|im_end|>``, no BOS).

This module reads the metadata with ``gguf.GGUFReader`` and rebuilds the tokenizer that llama.cpp
runs for the file, as a ``tokenizers`` pipeline:

* ``"llama"`` (SentencePiece): llama.cpp repeatedly merges the adjacent pair whose concatenation
  is the vocabulary piece with the highest score. That is BPE with one merge per way of splitting
  each piece, ranked by the piece's score, so it becomes a ``tokenizers`` BPE model with those
  merges; spaces become ``▁`` (plus a leading ``▁`` when ``add_space_prefix``), no
  pre-tokenizer (llama.cpp does not split the text), byte fallback through the ``<0xXX>`` pieces.
  One known difference: when two *different* splits of the same piece overlap in a text,
  llama.cpp merges the leftmost one, here the split listed first wins (ranks cannot tie in a
  ``tokenizers`` BPE model).
* ``"gpt2"`` (byte-level BPE): the file's merges, with the pre-tokenizer that llama.cpp uses for
  ``tokenizer.ggml.pre`` (only the pre-tokenizers in :data:`BYTE_LEVEL_PRE_TOKENIZERS`).

Control tokens become special added tokens and user-defined tokens plain added tokens: both are
matched whole before the model runs, as llama.cpp's partition of the text does (for control
tokens, when it parses special tokens, as its tools do). BOS, EOS, pad and
unknown tokens are set by the ids in the file, and BOS/EOS are added as ``add_bos_token`` /
``add_eos_token`` say (llama.cpp's defaults for the model when a flag is absent). The padding
side is left, as transformers' Llama and Gemma tokenizers have it; the file has no say on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

TOKENIZER_MODELS = ("llama", "gpt2")
"""``tokenizer.ggml.model`` values this module can rebuild."""

# Pre-tokenizers llama.cpp applies before byte-level BPE, keyed by ``tokenizer.ggml.pre``: the
# GPT-2 split (which tokenizers' ByteLevel pre-tokenizer does itself), after an optional split
# into single digits.
BYTE_LEVEL_PRE_TOKENIZERS = {"gpt-2": False, "smollm": True}
"""``tokenizer.ggml.pre`` values supported for ``"gpt2"`` models -> whether digits are split."""

# llama.cpp's defaults when the file has no add_bos_token / add_eos_token / add_space_prefix.
_DEFAULT_FLAGS = {
    "llama": {"add_bos_token": True, "add_eos_token": False, "add_space_prefix": True},
    "gpt2": {"add_bos_token": False, "add_eos_token": False, "add_space_prefix": False},
}

# gguf.TokenType values (kept as ints so this module imports without gguf).
_UNKNOWN, _CONTROL, _USER_DEFINED, _BYTE = 2, 3, 4, 6

_SPACE_PIECE = "▁"  # SentencePiece's escaped space


@dataclass(frozen=True)
class GGUFTokenizerMetadata:
    """The ``tokenizer.ggml.*`` keys of a GGUF file (None where the file lacks the key).

    Attributes:
        model: ``tokenizer.ggml.model`` (``"llama"`` = SentencePiece, ``"gpt2"`` = byte-level BPE).
        tokens: The vocabulary; a token's id is its index.
        token_types: ``gguf.TokenType`` value of each token (all normal if absent).
        scores: Per-token scores (SentencePiece merge priorities).
        merges: BPE merges as ``"left right"`` strings.
        pre: ``tokenizer.ggml.pre``, the pre-tokenizer name of byte-level models.
        bos_token_id: Id of the beginning-of-sequence token.
        eos_token_id: Id of the end-of-sequence token.
        pad_token_id: Id of the padding token (``tokenizer.ggml.padding_token_id``).
        unk_token_id: Id of the unknown token (``tokenizer.ggml.unknown_token_id``).
        add_bos_token: Whether BOS is prepended to every text.
        add_eos_token: Whether EOS is appended to every text.
        add_space_prefix: Whether SentencePiece text gets a leading space.
        chat_template: ``tokenizer.chat_template``.
    """

    model: str
    tokens: tuple[str, ...]
    token_types: tuple[int, ...] | None = None
    scores: tuple[float, ...] | None = None
    merges: tuple[str, ...] | None = None
    pre: str | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    unk_token_id: int | None = None
    add_bos_token: bool | None = None
    add_eos_token: bool | None = None
    add_space_prefix: bool | None = None
    chat_template: str | None = None


# GGUF key (after "tokenizer.") -> GGUFTokenizerMetadata field.
_KEYS = {
    "ggml.model": "model",
    "ggml.tokens": "tokens",
    "ggml.token_type": "token_types",
    "ggml.scores": "scores",
    "ggml.merges": "merges",
    "ggml.pre": "pre",
    "ggml.bos_token_id": "bos_token_id",
    "ggml.eos_token_id": "eos_token_id",
    "ggml.padding_token_id": "pad_token_id",
    "ggml.unknown_token_id": "unk_token_id",
    "ggml.add_bos_token": "add_bos_token",
    "ggml.add_eos_token": "add_eos_token",
    "ggml.add_space_prefix": "add_space_prefix",
    "chat_template": "chat_template",
}


def read_tokenizer_metadata(gguf_path: str | Path) -> GGUFTokenizerMetadata:
    """Read the tokenizer keys of a GGUF file (slow for big vocabularies: gguf parses in Python).

    Raises:
        ValueError: The file has no ``tokenizer.ggml.model`` or ``tokenizer.ggml.tokens``.
    """
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf_path)).fields
    values: dict[str, Any] = {}
    for key, name in _KEYS.items():
        field = fields.get(f"tokenizer.{key}")
        if field is not None:
            value = field.contents()
            values[name] = tuple(value) if isinstance(value, list) else value
    missing = [f"tokenizer.ggml.{k}" for k in ("model", "tokens") if k not in values]
    if missing:
        raise ValueError(f"{gguf_path} has no tokenizer metadata (missing {', '.join(missing)})")
    return GGUFTokenizerMetadata(**values)


def tokenizer_from_gguf(gguf_path: str | Path) -> Any:
    """The ``PreTrainedTokenizerFast`` that tokenizes as llama.cpp does for ``gguf_path``."""
    return build_tokenizer(read_tokenizer_metadata(gguf_path))


def special_token_settings(meta: GGUFTokenizerMetadata) -> dict[str, Any]:
    """Special tokens and BOS/EOS flags for ``PreTrainedTokenizerFast``, from the file's ids.

    Returns:
        ``bos_token``, ``eos_token``, ``pad_token``, ``unk_token`` (token strings, or None when
        the file names no such token), ``add_bos_token``, ``add_eos_token`` and
        ``add_space_prefix`` (the file's flags, else llama.cpp's defaults for the model).

    Raises:
        ValueError: An unsupported tokenizer model, a token id outside the vocabulary, or a flag
            that asks for BOS/EOS when the file names no such token.
    """
    if meta.model not in TOKENIZER_MODELS:
        raise ValueError(f"Unsupported tokenizer.ggml.model {meta.model!r}; supported: {TOKENIZER_MODELS}")
    settings: dict[str, Any] = {}
    for name in ("bos", "eos", "pad", "unk"):
        token_id = getattr(meta, f"{name}_token_id")
        if token_id is not None and not 0 <= token_id < len(meta.tokens):
            raise ValueError(f"{name}_token_id {token_id} is outside the vocabulary (0..{len(meta.tokens) - 1})")
        settings[f"{name}_token"] = None if token_id is None else meta.tokens[token_id]
    for flag, default in _DEFAULT_FLAGS[meta.model].items():
        value = getattr(meta, flag)
        settings[flag] = default if value is None else bool(value)
    for name in ("bos", "eos"):
        if settings[f"add_{name}_token"] and settings[f"{name}_token"] is None:
            raise ValueError(f"add_{name}_token is set but the file has no {name}_token_id")
    return settings


def spm_merges(meta: GGUFTokenizerMetadata) -> list[tuple[str, str]]:
    """BPE merges equivalent to llama.cpp's score-greedy SentencePiece tokenizer.

    Every way of splitting a piece into two vocabulary pieces is a merge, ranked by the piece's
    score (highest first); splits of one piece are ordered by the ids of their halves. As in
    llama.cpp, the piece's type does not matter (control and user-defined pieces never take part
    anyway: they are matched whole before BPE runs).

    Raises:
        ValueError: The file has no scores.
    """
    if meta.scores is None:
        raise ValueError("A SentencePiece ('llama') GGUF tokenizer needs tokenizer.ggml.scores")
    ids = {piece: i for i, piece in enumerate(meta.tokens)}
    ranked = []
    for i, piece in enumerate(meta.tokens):
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in ids and right in ids:
                ranked.append((-meta.scores[i], ids[left], ids[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def build_tokenizer(meta: GGUFTokenizerMetadata) -> Any:
    """Build the ``PreTrainedTokenizerFast`` that tokenizes as llama.cpp does for ``meta``.

    Raises:
        ValueError: An unsupported tokenizer model or pre-tokenizer, duplicated vocabulary
            entries, bad special-token ids, or missing scores/merges.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    settings = special_token_settings(meta)
    vocab = {piece: i for i, piece in enumerate(meta.tokens)}
    if len(vocab) != len(meta.tokens):
        raise ValueError(
            f"The vocabulary has {len(meta.tokens) - len(vocab)} duplicated pieces; "
            f"ids would shift, so it is not rebuilt"
        )
    backend = Tokenizer(
        _spm_model(meta, vocab, settings) if meta.model == "llama" else _byte_level_model(meta, vocab, settings)
    )
    if meta.model == "llama":
        _add_spm_text_handling(backend, settings["add_space_prefix"])
    else:
        _add_byte_level_text_handling(backend, meta.pre)
    _add_whole_tokens(backend, meta)
    backend.post_processor = _bos_eos_template(settings, vocab)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=settings["bos_token"],
        eos_token=settings["eos_token"],
        pad_token=settings["pad_token"],
        unk_token=settings["unk_token"],
        # Applied by the post-processor; also recorded in tokenizer_config.json for readers.
        add_bos_token=settings["add_bos_token"],
        add_eos_token=settings["add_eos_token"],
        padding_side="left",
        clean_up_tokenization_spaces=False,  # decode(encode(text)) must give text back
        model_input_names=["input_ids", "attention_mask"],  # decoders take no token_type_ids
    )
    tokenizer.chat_template = meta.chat_template  # saved only when the file has one
    return tokenizer


def _spm_model(meta: GGUFTokenizerMetadata, vocab: dict[str, int], settings: dict[str, Any]) -> Any:
    from tokenizers.models import BPE

    types = meta.token_types or ()
    return BPE(
        vocab=vocab,
        merges=spm_merges(meta),
        unk_token=settings["unk_token"],
        fuse_unk=True,
        byte_fallback=_BYTE in types,
    )


def _byte_level_model(meta: GGUFTokenizerMetadata, vocab: dict[str, int], settings: dict[str, Any]) -> Any:
    from tokenizers.models import BPE

    if meta.merges is None:
        raise ValueError("A byte-level BPE ('gpt2') GGUF tokenizer needs tokenizer.ggml.merges")
    # As llama.cpp reads them: split at the first space after the first character.
    merges = [(m[:cut], m[cut + 1 :]) for m in meta.merges if (cut := m.find(" ", 1)) > 0]
    return BPE(vocab=vocab, merges=merges, unk_token=settings["unk_token"])


def _add_spm_text_handling(backend: Any, add_space_prefix: bool) -> None:
    from tokenizers import decoders, normalizers

    steps = [normalizers.Prepend(_SPACE_PIECE)] if add_space_prefix else []
    backend.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", _SPACE_PIECE)])
    backend.pre_tokenizer = None  # llama.cpp's SentencePiece tokenizer does not split the text
    tail = [decoders.Strip(" ", 1, 0)] if add_space_prefix else []
    backend.decoder = decoders.Sequence(
        [decoders.Replace(_SPACE_PIECE, " "), decoders.ByteFallback(), decoders.Fuse(), *tail]
    )


def _add_byte_level_text_handling(backend: Any, pre: str | None) -> None:
    from tokenizers import decoders, pre_tokenizers

    if pre not in BYTE_LEVEL_PRE_TOKENIZERS:
        raise ValueError(
            f"Unsupported tokenizer.ggml.pre {pre!r} for a byte-level BPE tokenizer; "
            f"supported: {sorted(BYTE_LEVEL_PRE_TOKENIZERS)}"
        )
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    digits = [pre_tokenizers.Digits(individual_digits=True)] if BYTE_LEVEL_PRE_TOKENIZERS[pre] else []
    backend.pre_tokenizer = pre_tokenizers.Sequence([*digits, byte_level])
    backend.decoder = decoders.ByteLevel()


def _add_whole_tokens(backend: Any, meta: GGUFTokenizerMetadata) -> None:
    """Register control/unknown tokens as special and user-defined ones as plain added tokens."""
    from tokenizers import AddedToken

    types = meta.token_types or ()
    special = [
        AddedToken(meta.tokens[i], special=True, normalized=False)
        for i, t in enumerate(types)
        if t in (_CONTROL, _UNKNOWN)
    ]
    plain = [
        AddedToken(meta.tokens[i], special=False, normalized=False) for i, t in enumerate(types) if t == _USER_DEFINED
    ]
    backend.add_special_tokens(special)
    backend.add_tokens(plain)


def _bos_eos_template(settings: dict[str, Any], vocab: dict[str, int]) -> Any:
    """Post-processor adding BOS/EOS as the flags say (in a pair, each sequence gets its own)."""
    from tokenizers import processors

    wrappers = [name for name in ("bos", "eos") if settings[f"add_{name}_token"]]

    def sequence(name: str, type_id: int) -> list[str]:
        bos = [f"{settings['bos_token']}:{type_id}"] if "bos" in wrappers else []
        eos = [f"{settings['eos_token']}:{type_id}"] if "eos" in wrappers else []
        return [*bos, f"${name}:{type_id}", *eos]

    tokens = sorted({settings[f"{name}_token"] for name in wrappers})
    return processors.TemplateProcessing(
        single=sequence("A", 0),
        pair=sequence("A", 0) + sequence("B", 1),
        special_tokens=[(t, vocab[t]) for t in tokens],
    )
