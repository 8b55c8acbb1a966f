"""TruncatedTransformer: a sentence-transformers ``Transformer`` that stops after the deepest needed layer.

Why a subclass instead of a wrapper: Optimum's ONNX exporter and every sentence-transformers code path
recognise a ``Transformer`` first module, so subclassing keeps the fused embedder exportable and loadable
by ``SentenceTransformer(path)``. What it adds:

* **Truncation.** Only the first ``num_layers`` transformer layers are kept (in memory and on disk), so
  a classifier that uses layers 10-14 of a 30-layer model pays for 14 layers, not 30.
* **Un-normalised last state.** In ``transformers`` the last entry of ``hidden_states`` comes *after* the
  model's final norm, all others before it. A naively truncated model would normalise its new last layer
  and so differ from the full model's hidden state of the same index. When truncated, the final norm is
  turned into the identity, and the first truncation is checked against the full model on a probe input.
* **Every hidden state, plain text.** ``output_hidden_states`` is on, inputs are plain text (never a
  chat template the tokenizer happens to ship), and inputs are never unpadded.
* **Decoder tokenizer pitfalls.** A missing pad token is set to EOS (said in a log message);
  ``position_ids`` are derived from the attention mask so left and right padding give the same vectors,
  also for absolute-position models such as GPT-2.
* **Precision.** ``dtype`` (``fp32``, ``bf16``, ``fp16``) is a setting of the forward pass, run under
  ``torch.autocast`` (see :mod:`lafusion_st.precision`): weights stay float32 in memory and on disk, hidden
  states come out float32, and ONNX export traces in float32 whatever the setting.
* **Bad input.** Non-string items raise ``TypeError``. A text that tokenizes to zero tokens (the empty
  string for most decoder tokenizers, and whatever else a tokenizer drops entirely, such as whitespace
  for some) is encoded as the tokenizer's BOS token (EOS if it has none): the model's state for "no
  text", the same alone and in a batch. Texts longer than ``max_seq_length`` are truncated, with one
  warning per module.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterator
from typing import Any

import torch

from lafusion_st._compat import OUTPUT_RECORDING_REGISTRY, Transformer
from lafusion_st.modes import Dtype
from lafusion_st.precision import autocast, check_dtype

logger = logging.getLogger(__name__)

TEXT_ONLY_MODALITY = {"text": {"method": "forward", "method_output_name": "last_hidden_state"}}
# Attribute names of the norm a decoder applies after its last layer (llama/qwen2/gemma: ``norm``,
# gpt2: ``ln_f``, opt: ``final_layer_norm``, phi: ``final_layernorm``, mamba-like: ``norm_f``). Encoders
# such as BERT have none. The truncation self-check catches any architecture this list misses.
FINAL_NORM_NAMES = ("norm", "ln_f", "final_layer_norm", "final_layernorm", "norm_f")


class TruncatedTransformer(Transformer):
    """A ``Transformer`` that emits every hidden state and runs only its first ``num_layers`` layers.

    Args:
        model_name_or_path: Local folder (or cached hub id) of a Hugging Face model.
        num_layers: Transformer layers to keep; ``None`` keeps all. ``hidden_states`` then has
            ``num_layers + 1`` entries, numbered as in the full model.
        source_num_layers: Depth of the original model. Set automatically on first truncation and saved,
            so a reloaded truncated folder knows its last state must stay un-normalised.
        source_model: The model folder this backbone was first loaded from; set automatically and saved, so
            that a saved embedder passed where a model is expected can name the model to pass instead.
        dtype: Compute precision of the forward pass (saved with the module, so an embedder reproduces the
            precision of the scan it was chosen from). fp16 on CPU and bf16 without native support are
            refused when the forward pass runs.
        **transformer_kwargs: Passed to ``sentence_transformers`` ``Transformer`` (``max_seq_length``,
            ``model_kwargs``, ``processor_kwargs``, ``config_kwargs``, ...).
    """

    config_keys: list[str] = [*Transformer.config_keys, "num_layers", "source_num_layers", "source_model", "dtype"]

    def __init__(
        self,
        model_name_or_path: str,
        *,
        num_layers: int | None = None,
        source_num_layers: int | None = None,
        source_model: str | None = None,
        dtype: Dtype = "fp32",
        **transformer_kwargs: Any,
    ) -> None:
        self.dtype = check_dtype(dtype)
        config_kwargs = dict(transformer_kwargs.pop("config_kwargs", None) or {})
        config_kwargs["output_hidden_states"] = True
        transformer_kwargs.setdefault("modality_config", TEXT_ONLY_MODALITY)
        transformer_kwargs.setdefault("module_output_name", "token_embeddings")
        transformer_kwargs["unpad_inputs"] = False
        super().__init__(model_name_or_path, config_kwargs=config_kwargs, **transformer_kwargs)

        layer_list = find_layer_list(self.auto_model)
        loaded_layers = len(layer_list)
        self.source_num_layers = int(source_num_layers if source_num_layers is not None else loaded_layers)
        # A reloaded folder (source_num_layers given) is not the source; folders saved before this was recorded
        # keep None.
        self.source_model = source_model if source_num_layers is not None else str(model_name_or_path)
        self.num_layers = int(num_layers if num_layers is not None else loaded_layers)
        if not 1 <= self.num_layers <= loaded_layers:
            raise ValueError(
                f"num_layers={num_layers} is out of range: this model has {loaded_layers} layers (1..{loaded_layers})."
            )
        if self.source_num_layers < loaded_layers:
            raise ValueError(
                f"source_num_layers={source_num_layers} is smaller than the {loaded_layers} layers on disk."
            )

        if self.num_layers < self.source_num_layers:
            probe = self._probe_reference() if self.num_layers < loaded_layers else None
            truncate_layers(self.auto_model, self.num_layers)
            silence_final_norm(self.auto_model)
            if probe is not None:
                self._check_truncation(*probe)
        self._cap_max_seq_length()
        self._fix_pad_token()
        self._empty_text_substitute = self._find_empty_text_substitute()
        self._warned_truncation = False
        # From the signature, not ``model_forward_params``: sentence-transformers 6 sets that to None for
        # models whose forward takes ``**kwargs`` (all of transformers 5), and 5.x adds ``token_type_ids`` to it
        # whatever the model, which Falcon or StableLM then receive through ``**kwargs`` and fail on.
        parameters = inspect.signature(self.auto_model.forward).parameters
        self._takes_position_ids = "position_ids" in parameters
        self.takes_token_type_ids = "token_type_ids" in parameters
        """Whether the backbone's forward names ``token_type_ids``; if not, they are never passed to it."""

    # ----------------------------------------------------------------------------------------- setup
    def _probe_reference(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Hidden state ``num_layers`` of the *full* model for a short probe input, before truncation."""
        inputs = {"input_ids": torch.tensor([[1, 2, 3, 4, 5]]), "attention_mask": torch.ones(1, 5, dtype=torch.long)}
        inputs["input_ids"] = inputs["input_ids"].clamp(max=self.auto_model.config.vocab_size - 1)
        with torch.inference_mode():
            reference = self.auto_model(**inputs, output_hidden_states=True).hidden_states[self.num_layers]
        return inputs, reference

    def _check_truncation(self, inputs: dict[str, torch.Tensor], reference: torch.Tensor) -> None:
        with torch.inference_mode():
            truncated = self.auto_model(**inputs, output_hidden_states=True).hidden_states[self.num_layers]
        if not torch.allclose(truncated, reference, atol=1e-5, rtol=1e-4):
            raise RuntimeError(
                f"Truncating {type(self.auto_model).__name__} to {self.num_layers} layers changed hidden state "
                f"{self.num_layers} (max abs diff {(truncated - reference).abs().max():.3g}); its final norm is "
                f"not under one of the names {FINAL_NORM_NAMES}. Select the last layer to avoid truncation."
            )

    def _cap_max_seq_length(self) -> None:
        """Never tokenize past the model's position table: absolute-position models (GPT-2, BERT) index out of
        range there, and rotary ones were not trained beyond it. sentence-transformers applies the same limit
        when no ``max_seq_length`` is given; an explicit larger one is lowered, and said."""
        config = self.auto_model.config
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        if isinstance(limit, int) and self.max_seq_length is not None and self.max_seq_length > limit:
            logger.warning(
                "max_seq_length=%d exceeds the %d positions of %s; using max_seq_length=%d.",
                self.max_seq_length,
                limit,
                type(self.auto_model).__name__,
                limit,
            )
            self.max_seq_length = limit

    def _fix_pad_token(self) -> None:
        tokenizer = self.tokenizer
        if tokenizer is None or tokenizer.pad_token is not None:
            return
        if tokenizer.eos_token is None:
            raise ValueError(
                "The tokenizer has neither a pad token nor an EOS token to pad with; set tokenizer.pad_token."
            )
        tokenizer.pad_token = tokenizer.eos_token
        logger.info("Tokenizer has no pad token: using its EOS token %r for padding.", tokenizer.eos_token)

    def _find_empty_text_substitute(self) -> str | None:
        if self.tokenizer is None or len(self.tokenizer("")["input_ids"]) > 0:
            return None
        substitute = self.tokenizer.bos_token or self.tokenizer.eos_token
        if substitute is None:
            raise ValueError("The tokenizer turns '' into zero tokens and has no BOS/EOS token to stand in for it.")
        return substitute

    # ------------------------------------------------------------------------------------ inference
    def preprocess(self, inputs: list[Any], prompt: str | None = None, **kwargs: Any) -> dict[str, Any]:
        for index, text in enumerate(inputs):
            if not isinstance(text, str):
                raise TypeError(f"Input {index} is {type(text).__name__} ({text!r}); lafusion embeds strings only.")
        if self._empty_text_substitute is not None:
            # Tokenized alone (without the prompt), so a text is substituted the same way with or without one.
            token_ids = self.tokenizer(list(inputs), verbose=False)["input_ids"]
            inputs = [text if ids else self._empty_text_substitute for text, ids in zip(inputs, token_ids, strict=True)]
        features = super().preprocess(inputs, prompt=prompt, **kwargs)
        if not self.takes_token_type_ids:
            features.pop("token_type_ids", None)
        self._warn_if_truncated(inputs, features)
        return features

    def _warn_if_truncated(self, inputs: list[str], features: dict[str, Any]) -> None:
        max_length = self.max_seq_length
        mask = features.get("attention_mask")
        if self._warned_truncation or max_length is None or mask is None:
            return
        at_limit = [text for text, length in zip(inputs, mask.sum(dim=1).tolist(), strict=True) if length >= max_length]
        if any(len(self.tokenizer(text, verbose=False)["input_ids"]) > max_length for text in at_limit):
            self._warned_truncation = True
            logger.warning(
                "Some texts are longer than max_seq_length=%d tokens and were truncated to it "
                "(said once per model; raise max_seq_length to keep more).",
                max_length,
            )

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if "position_ids" not in features and "attention_mask" in features and self._takes_position_ids:
            features["position_ids"] = position_ids_from_mask(features["attention_mask"])
        if self.dtype == "fp32" or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing():
            return super().forward(features, **kwargs)
        with autocast(self.dtype, features["input_ids"].device):
            features = super().forward(features, **kwargs)
        for name in ("token_embeddings", "all_layer_embeddings"):
            if name in features:
                value = features[name]
                features[name] = value.float() if torch.is_tensor(value) else tuple(state.float() for state in value)
        return features

    def __getstate__(self) -> dict[str, Any]:
        """Drop transformers 5's hidden-state recording hooks before pickling (multi-process pools).

        They are local closures, which pickle refuses (a plain ``Transformer`` with ``output_hidden_states``
        fails the same way); clearing the model's ``_output_capturing_hooks_installed`` flag makes transformers
        install them again on the next forward, here and in the worker. Nothing to drop before transformers 5.
        """
        for module in self.auto_model.modules():
            for hook_id, hook in list(module._forward_hooks.items()):
                if getattr(hook, "__module__", None) == "transformers.utils.output_capturing":
                    del module._forward_hooks[hook_id]
            if getattr(module, "_output_capturing_hooks_installed", False):
                module._output_capturing_hooks_installed = False
        return super().__getstate__()

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Re-register output recording after unpickling (sentence-transformers' multi-process pools).

        transformers (4.5x and 5) records ``hidden_states`` through a process-global registry that is filled
        when a model is *constructed*; a model unpickled in a spawned worker skips that, and would silently
        return no hidden states. Registering the classes again restores them.
        """
        super().__setstate__(state)
        if OUTPUT_RECORDING_REGISTRY is None:
            return
        for module in self.auto_model.modules():
            if getattr(module, "_can_record_outputs", None):
                OUTPUT_RECORDING_REGISTRY.setdefault(str(type(module)), module._can_record_outputs)

    def get_config_dict(self) -> dict[str, Any]:
        return {
            **super().get_config_dict(),
            "num_layers": self.num_layers,
            "source_num_layers": self.source_num_layers,
            "source_model": self.source_model,
            "dtype": self.dtype,
        }

    def __repr__(self) -> str:
        return (
            f"TruncatedTransformer(num_layers={self.num_layers}, source_num_layers={self.source_num_layers}, "
            f"dtype={self.dtype}, "
            f"architecture={type(self.auto_model).__name__})"
        )


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over the real tokens whatever the padding side (pads get 0 and are masked anyway)."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def find_layer_list(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The ``ModuleList`` of transformer blocks: the shallowest one as long as ``config.num_hidden_layers``."""
    depth = model.config.num_hidden_layers
    candidates = [
        (name.count("."), name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList) and len(module) == depth
    ]
    if not candidates:
        raise ValueError(f"Cannot find the {depth} transformer layers of {type(model).__name__}.")
    return min(candidates, key=lambda item: item[:2])[2]


def _layer_list_owner(model: torch.nn.Module) -> tuple[torch.nn.Module, str]:
    layer_list = find_layer_list(model)
    for module in model.modules():
        for child_name, child in module.named_children():
            if child is layer_list:
                return module, child_name
    raise AssertionError("unreachable: the layer list is a submodule of the model")


def truncate_layers(model: torch.nn.Module, num_layers: int) -> None:
    """Keep the first ``num_layers`` blocks and make the config agree (also per-layer lists such as
    ``layer_types``, which some architectures index by layer)."""
    owner, name = _layer_list_owner(model)
    old_depth = model.config.num_hidden_layers
    setattr(owner, name, torch.nn.ModuleList(list(getattr(owner, name))[:num_layers]))
    for key, value in list(model.config.to_dict().items()):
        if isinstance(value, list) and len(value) == old_depth and key != "architectures":
            setattr(model.config, key, value[:num_layers])
    model.config.num_hidden_layers = num_layers


def silence_final_norm(model: torch.nn.Module) -> None:
    """Make the decoder's final norm the identity, so the last hidden state of a truncated model equals the
    full model's (un-normalised) state of that layer. Weights stay in place, so saving and loading are
    unchanged; a forward hook returns the norm's input."""
    owner, _ = _layer_list_owner(model)
    for name in FINAL_NORM_NAMES:
        norm = getattr(owner, name, None)
        if isinstance(norm, torch.nn.Module):
            norm.register_forward_hook(_return_input)
            return


def _return_input(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> Any:
    """Forward hook that discards a module's output (a named function, so the model stays picklable
    for sentence-transformers' multi-process pools)."""
    return args[0]


@contextlib.contextmanager
def float32_forward(model: torch.nn.Module) -> Iterator[None]:
    """Run every :class:`TruncatedTransformer` inside ``model`` in fp32 for the duration (ONNX export traces and
    validates in float32 whatever precision the embedder computes in), then restore their settings."""
    backbones = [module for module in model.modules() if isinstance(module, TruncatedTransformer)]
    saved = [backbone.dtype for backbone in backbones]
    for backbone in backbones:
        backbone.dtype = "fp32"
    try:
        yield
    finally:
        for backbone, dtype in zip(backbones, saved, strict=True):
            backbone.dtype = dtype
