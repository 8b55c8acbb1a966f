"""Strict reading of a saved module's JSON config.

Why not ``Module.load_config``: it returns ``{}`` for a missing file, which surfaces later as a confusing
``TypeError`` about constructor arguments. A tampered or incomplete lafusion folder must say what is wrong
and where.
"""

from __future__ import annotations

import json
import os
from typing import Any


def load_module_config(
    cls: type, model_name_or_path: str, subfolder: str = "", renamed: dict[str, str] | None = None
) -> dict[str, Any]:
    """Read ``cls.config_file_name`` from a local module folder and check it holds exactly ``cls.config_keys``.

    ``renamed`` maps keys written by earlier versions to their current names, so old folders keep loading.

    Raises:
        FileNotFoundError: The config file is missing.
        ValueError: Not JSON, not an object, or keys missing / unknown.
    """
    path = os.path.join(model_name_or_path, subfolder, cls.config_file_name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{cls.__name__} config {path} is missing; the saved model folder is incomplete.")
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{cls.__name__} config {path} is not valid JSON: {error}") from error
    if not isinstance(config, dict):
        raise ValueError(f"{cls.__name__} config {path} must hold a JSON object, got {type(config).__name__}.")
    for old, new in (renamed or {}).items():
        if old in config and new not in config:
            config[new] = config.pop(old)
    missing = [key for key in cls.config_keys if key not in config]
    unknown = [key for key in config if key not in cls.config_keys]
    if missing or unknown:
        raise ValueError(
            f"{cls.__name__} config {path} is invalid: missing keys {missing}, unknown keys {unknown}; "
            f"expected exactly {cls.config_keys}."
        )
    return config
