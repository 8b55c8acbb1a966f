"""Tiny randomly initialised models of each family we support, built once per test session.

Why build instead of download: tests run offline and in seconds. Each model has 4 layers and hidden size
32, with a word-level tokenizer saved beside it, so every code path (decoder vs encoder, rotary vs
absolute positions, with and without a pad token) is exercised on real computations.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModel,
    AutoTokenizer,
    BertConfig,
    FalconConfig,
    Gemma2Config,
    Gemma3TextConfig,
    GPT2Config,
    GraniteConfig,
    LlamaConfig,
    MistralConfig,
    Olmo2Config,
    Phi3Config,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
    StableLmConfig,
)

from lafusion_st.data import LabeledTexts
from lafusion_st.pooling import pool
from lafusion_st.probe import ProbeScore

WORDS = (
    "the a an movie film was is good bad great terrible boring fun plot actors story and but not very "
    "really quite i it this that of to in on with for loved hated stock market shares profit loss company "
    "oil price rose fell trade bank rates wheat grain earnings acquisition merger"
).split()
NUM_LAYERS = 4
HIDDEN = 32


def _byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on WORDS. Why: transformers 5 loads any qwen2 folder's tokenizer as
    ``Qwen2Tokenizer``, which rebuilds a byte-level BPE from the saved vocab and merges; a word-level vocab
    would come back as nonsense tokens."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["[UNK]", "[PAD]", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator([" ".join(WORDS)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", bos_token="<s>", eos_token="</s>")


def _tokenizer(kind: str) -> PreTrainedTokenizerFast:
    if kind == "decoder-byte-level":
        return _byte_level_tokenizer()
    specials = ["[UNK]", "[PAD]", "<s>", "</s>", "[CLS]", "[SEP]"]
    vocab = {token: index for index, token in enumerate(specials + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if kind == "encoder":
        backend.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]"
        )
    if kind == "decoder-no-pad":  # like GPT-2: no pad token at all
        return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", bos_token="<s>", eos_token="</s>")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", bos_token="<s>", eos_token="</s>"
    )


def _configs(vocab_size: int) -> dict[str, tuple]:
    common = dict(vocab_size=vocab_size, hidden_size=HIDDEN, num_hidden_layers=NUM_LAYERS, intermediate_size=64)
    return {
        "llama": (
            LlamaConfig(**common, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128),
            "decoder",
        ),
        "qwen2": (
            Qwen2Config(**common, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128),
            "decoder-byte-level",
        ),
        "gemma3": (
            Gemma3TextConfig(
                **common,
                num_attention_heads=2,
                num_key_value_heads=1,
                head_dim=16,
                sliding_window=4,
                max_position_embeddings=128,
            ),
            "decoder",
        ),
        "gpt2": (
            GPT2Config(vocab_size=vocab_size, n_embd=HIDDEN, n_layer=NUM_LAYERS, n_head=4, n_positions=128),
            "decoder-no-pad",
        ),
        "bert": (BertConfig(**common, num_attention_heads=4, max_position_embeddings=128), "encoder"),
    }


def _more_decoder_configs(vocab_size: int) -> dict[str, PretrainedConfig]:
    """Decoder families of the paper's models and a few more, beyond the five every test runs on."""
    common = dict(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        num_hidden_layers=NUM_LAYERS,
        num_attention_heads=4,
        max_position_embeddings=128,
        pad_token_id=1,
    )
    gqa = dict(common, intermediate_size=64, num_key_value_heads=2)
    return {
        "gemma2": Gemma2Config(**gqa, head_dim=8, sliding_window=4),
        "mistral": MistralConfig(**gqa),
        "qwen3": Qwen3Config(**gqa, head_dim=8),
        "falcon": FalconConfig(**common),
        "phi3": Phi3Config(**gqa),
        "olmo2": Olmo2Config(**gqa),
        "granite": GraniteConfig(**gqa),
        "stablelm": StableLmConfig(**gqa),
    }


FAMILIES = ("llama", "qwen2", "gemma3", "gpt2", "bert")
MORE_DECODER_FAMILIES = ("gemma2", "mistral", "qwen3", "falcon", "phi3", "olmo2", "granite", "stablelm")
DECODER_FAMILIES = ("llama", "qwen2", "gemma3", "gpt2")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Family name -> folder with a tiny random model and its tokenizer."""
    root = tmp_path_factory.mktemp("tiny_models")
    tokenizers = {kind: _tokenizer(kind) for kind in ("encoder", "decoder", "decoder-no-pad", "decoder-byte-level")}
    vocab_size = max(len(tokenizer) for tokenizer in tokenizers.values())
    folders = {}
    for family, (config, tokenizer_kind) in _configs(vocab_size).items():
        torch.manual_seed(0)
        model = AutoModel.from_config(config)
        folder = Path(root, family)
        model.save_pretrained(folder)
        tokenizers[tokenizer_kind].save_pretrained(folder)
        folders[family] = str(folder)
    return folders


@pytest.fixture(scope="session")
def more_tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], str]:
    """``get(family)`` -> folder of a tiny model of one of :data:`MORE_DECODER_FAMILIES`, built on first use.

    Their word-level tokenizer returns ``token_type_ids``, which Falcon and StableLM must never receive."""
    root = tmp_path_factory.mktemp("more_tiny_models")
    tokenizer = _tokenizer("decoder")
    configs = _more_decoder_configs(len(tokenizer))
    folders: dict[str, str] = {}

    def get(family: str) -> str:
        if family not in folders:
            torch.manual_seed(0)
            folder = Path(root, family)
            AutoModel.from_config(configs[family]).save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            folders[family] = str(folder)
        return folders[family]

    return get


def hand_made_score(accuracy_folds: list[float], probe: str = "ranking") -> ProbeScore:
    """A probe score whose per-fold accuracies (and macro-F1) are ``accuracy_folds``: the noise rule and the
    searches only read the fold scores, so tests of them need no data."""
    folds = tuple(accuracy_folds)
    return ProbeScore(
        accuracy_mean=float(np.mean(folds)),
        accuracy_std=float(np.std(folds)),
        macro_f1_mean=float(np.mean(folds)),
        macro_f1_std=float(np.std(folds)),
        folds=len(folds),
        num_samples=100,
        num_features=4,
        converged=True,
        probe=probe,
        accuracy_folds=folds,
        macro_f1_folds=folds,
        regularisation_folds=(1.0,) * len(folds),
    )


def reference_embeddings(folder: str, layers: list[int], pooling: str) -> np.ndarray:
    """Pool the *full* model's hidden states one text at a time (no padding at all)."""
    model = AutoModel.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    forward_parameters = inspect.signature(model.forward).parameters
    rows = []
    for text in SENTENCES:
        encoded = tokenizer([text], return_tensors="pt")
        with torch.inference_mode():
            # What the tokenizer gives and the forward names (Falcon/StableLM take no token_type_ids).
            inputs = {name: value for name, value in encoded.items() if name in forward_parameters}
            states = model(**inputs, output_hidden_states=True).hidden_states
        rows.append(torch.cat([pool(states[layer], encoded["attention_mask"], pooling) for layer in layers], dim=-1)[0])
    return torch.stack(rows).numpy()


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


SENTENCES = [
    "the movie was very good",
    "i hated this boring film",
    "oil price rose",
    "the company reported a profit and the stock market loved it but shares fell",
    "fun",
]


@pytest.fixture(scope="module")
def good_or_not() -> LabeledTexts:
    """Eight random words a text, label: whether "good" is among them. Bag-of-words layers (the mean-pooled
    embedding output) see it plainly; the random tiny model's deeper layers blur it (a falling layer curve)."""
    rng = np.random.default_rng(0)
    words = [word for word in WORDS if word != "good"]
    texts, labels = [], []
    for index in range(120):
        text = list(rng.choice(words, size=8))
        if index % 2:
            text[rng.integers(8)] = "good"
        texts.append(" ".join(text))
        labels.append(index % 2)
    return LabeledTexts(texts, labels)


@pytest.fixture(scope="module")
def scan_cache_dir(tmp_path_factory: pytest.TempPathFactory):
    """One scan cache (``$LAFUSION_CACHE``) per test module, so that a run reuses the scans of the module's
    earlier tests."""
    root = tmp_path_factory.mktemp("lafusion_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LAFUSION_CACHE", str(root))
        yield root / "scans"
