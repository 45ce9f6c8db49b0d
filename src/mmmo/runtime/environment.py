"""The process environment a search runs in: Hugging Face caches inside the project, and no hub access unasked.

A bottom module (it imports nothing of mmmo): the CLI, the search and every Ray worker call it before a library
reads the variables.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Variables a user may set to something else: their value wins.
OFFLINE_DEFAULTS = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def use_project_cache(root: Path) -> Path:
    """Keep Hugging Face caches (datasets' Arrow cache of the task files) in `root`/.cache/hf_home, and stay off the
    hub; returns the HF_HOME in effect.

    An HF_HOME (or offline switch) the user already set is respected. Call before lm-eval reads a task; an
    already-imported `datasets`, which reads its cache folder at import time, is pointed at the folder too.
    """
    home = Path(os.environ.setdefault("HF_HOME", str((Path(root) / ".cache").resolve() / "hf_home")))
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE", home / "datasets"))
    if "datasets" in sys.modules:
        import datasets.config

        datasets.config.HF_DATASETS_CACHE = datasets_cache
    for key, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(key, value)
    return home
