"""Where the benchmarks keep their data, and the process set-up every benchmark script makes in its main()."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"  # results, tables and plots the benchmarks store
SMOKE_OUT = Path("/tmp")  # where --smoke runs write, so they never touch DATA


def benchmark_environment() -> None:
    """Caches in the project, the network never used, no GUI backend: set (where not set already) before anything
    imports transformers, datasets or matplotlib, which read these when first imported."""
    os.environ.setdefault("HF_HOME", str(REPO / ".cache" / "hf_home"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MPLBACKEND", "Agg")


def quiet_benchmark(threads: int) -> None:
    """A benchmark process's set-up: `threads` torch CPU threads, mmmo's log at errors only, no import warnings."""
    import logging
    import warnings

    import torch

    torch.set_num_threads(threads)
    logging.getLogger("mmmo").setLevel(logging.ERROR)
    # gpytorch still scripts a few functions at import; mmmo hides the numerical warnings it expects itself.
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script(_method)?` is deprecated", category=DeprecationWarning)
