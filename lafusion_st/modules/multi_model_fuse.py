"""MultiModelFuse: several LLM embedders, each with its own tokenizer and layers, fused into one vector."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from sentence_transformers import SentenceTransformer

from lafusion_st._compat import InputModule
from lafusion_st.files import check_component
from lafusion_st.fusion import FUSION_MODES, FusionMode, fuse, fused_dimension
from lafusion_st.model import FusedSentenceTransformer
from lafusion_st.modules.config_io import load_module_config
from lafusion_st.modules.fusion_weights import init_fusion_weights, load_fusion_weights, save_fusion_weights


class MultiModelFuse(InputModule):
    """First module of a multi-LLM embedder: runs each member on the same texts and fuses their vectors.

    Each member is itself a complete single-model ``SentenceTransformer`` (typically
    ``TruncatedTransformer`` + ``LayerSelect``), so it keeps its own tokenizer, padding side, max length
    and layer choice, and it is saved as an ordinary sentence-transformers folder under ``members/``.
    That also gives the ONNX route: one graph per member plus a small fusion step.

    Why no per-model standardisation or projection: nothing here is trained, and every consumer we ship
    (the layer probes, MTEB's logistic regression) standardises or is scale-robust; a projection would need
    fitting. ``concat`` (the default) keeps every feature of every member; ``mean``/``sum``/``weighted`` are
    accepted only when members have equal dimensions, and mix coordinates of different vector spaces, so
    they are useful mainly for members of one family.

    Args:
        members: Single-model embedders, in fusion order.
        fusion: One of :attr:`FUSION_MODES`.
        model_weights: One weight per member for ``fusion="weighted"`` (default uniform), saved in safetensors.
        member_names: Folder names under ``members/`` (default ``0``, ``1``, ...); set by the builder to
            readable names.
    """

    FUSION_MODES = FUSION_MODES
    config_file_name: str = "multi_model_fuse_config.json"
    config_keys: list[str] = ["member_names", "fusion"]
    save_in_root: bool = True

    def __init__(
        self,
        members: Sequence[SentenceTransformer],
        fusion: FusionMode = "concat",
        model_weights: Sequence[float] | None = None,
        member_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"MultiModelFuse fuses at least two models, got {len(members)}.")
        self.member_names = list(member_names) if member_names is not None else [str(i) for i in range(len(members))]
        for name in self.member_names:
            check_component(name, "Member name")
        if len(self.member_names) != len(members) or len(set(self.member_names)) != len(members):
            raise ValueError(f"member_names {self.member_names} must be {len(members)} distinct names.")
        dimensions = [member.get_embedding_dimension() for member in members]
        if any(dimension is None for dimension in dimensions):
            raise ValueError(f"Every member must report its embedding dimension, got {dimensions}.")
        self.embedding_dimension = fused_dimension(dimensions, fusion)
        self.fusion = fusion
        self.members = torch.nn.ModuleList(members)
        self.model_weights = init_fusion_weights(fusion, model_weights, len(members), "model_weights")

    # Each member tokenizes for itself; features are namespaced "<member index>.<key>" so that
    # sentence-transformers can move them to the device as one flat dict.
    def preprocess(self, inputs: list[Any], prompt: str | None = None, **kwargs: Any) -> dict[str, Any]:
        features: dict[str, Any] = {}
        for index, member in enumerate(self.members):
            for key, value in member.preprocess(inputs, prompt=prompt, **kwargs).items():
                features[f"{index}.{key}"] = value
        return features

    def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        vectors = []
        for index, member in enumerate(self.members):
            prefix = f"{index}."
            member_features = {key[len(prefix) :]: value for key, value in features.items() if key.startswith(prefix)}
            vectors.append(member(member_features)["sentence_embedding"])
        features["sentence_embedding"] = fuse(vectors, self.fusion, self.model_weights)
        return features

    @property
    def max_seq_length(self) -> int | None:
        lengths = [member.max_seq_length for member in self.members if member.max_seq_length is not None]
        return min(lengths) if lengths else None

    @max_seq_length.setter
    def max_seq_length(self, value: int | None) -> None:
        for member in self.members:
            member.max_seq_length = value

    @property
    def tokenizer(self) -> Any:
        """The first member's tokenizer (sentence-transformers asks for one); each member uses its own."""
        return self.members[0].tokenizer

    def get_embedding_dimension(self) -> int:
        return self.embedding_dimension

    get_sentence_embedding_dimension = get_embedding_dimension

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        for name, member in zip(self.member_names, self.members, strict=True):
            member.save(os.path.join(output_path, "members", name), safe_serialization=safe_serialization)
        self.save_config(output_path)
        save_fusion_weights(self.model_weights, "model_weights", output_path)

    @classmethod
    def load(
        cls, model_name_or_path: str, subfolder: str = "", trust_remote_code: bool = False, **kwargs: Any
    ) -> MultiModelFuse:
        root = os.path.join(model_name_or_path, subfolder)
        config = load_module_config(cls, model_name_or_path, subfolder)
        members = []
        if not isinstance(config["member_names"], list):
            raise ValueError(f"member_names in {root} must be a list, got {config['member_names']!r}.")
        for name in config["member_names"]:
            check_component(name, "Member name", root=os.path.join(root, "members"))
            member_path = os.path.join(root, "members", name)
            if not os.path.isfile(os.path.join(member_path, "modules.json")):
                raise FileNotFoundError(
                    f"Member {name!r} of this fused model is missing: no {member_path}/modules.json."
                )
            members.append(
                FusedSentenceTransformer(member_path, local_files_only=True, trust_remote_code=trust_remote_code)
            )
        weights = load_fusion_weights(config["fusion"], "model_weights", root)
        return cls(members, fusion=config["fusion"], model_weights=weights, member_names=config["member_names"])

    def __repr__(self) -> str:
        return f"MultiModelFuse(members={self.member_names}, fusion={self.fusion!r}, dim={self.embedding_dimension})"
