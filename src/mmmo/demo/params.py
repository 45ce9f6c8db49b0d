"""What determines a built demo: its parameters, and the version of the code that builds them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

# Bump when a code change alters what gets built: a cached build with an older version is rebuilt.
BUILD_VERSION = 1


@dataclass(frozen=True)
class DemoParams:
    """Everything that determines the built demo; its hash (with BUILD_VERSION) keys the cache."""

    seed: int = 0
    hidden_size: int = 96
    intermediate_size: int = 192
    layers: int = 3
    heads: int = 4
    max_positions: int = 64
    batch_size: int = 64
    base_steps: int = 800
    base_lr: float = 2e-3
    # Share of the base's rows per skill (in SKILLS order); the rest are the copy task. Set per skill (some
    # are picked up far more easily than others) so that the base is weak to middling at each: each expert
    # then masters its own task, and merges beat every expert on the mean. Training is chaotic (another CPU
    # kernel set or seed gives another draw), and arithmetic is learned in a sudden jump, so the share is
    # chosen for what holds on every draw (scripts/demo_calibration.py, benchmarks/RESULTS.md): at 0.12 the
    # base missed arithmetic on 3 draws of 5 (0.04-0.16) and merges then lost to the arithmetic expert;
    # at 0.20 it learned it fully (0.98) and the arithmetic expert had nothing to add.
    base_skill_shares: tuple[float, ...] = (0.16, 0.02, 0.04)
    expert_steps: int = 300
    expert_lr: float = 7e-4
    expert_skill_share: float = 0.5  # the rest of an expert's rows replay the base's mixture
    warmup_steps: int = 30
    word_len: tuple[int, int] = (4, 7)
    eval_examples: int = 50
    eval_limit: int = 50  # the limit written into demo.yaml's objectives

    def digest(self) -> str:
        """A short hash of the parameters and BUILD_VERSION."""
        blob = json.dumps({"version": BUILD_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


DEFAULT_PARAMS = DemoParams()
