"""The demo's synthetic skills (prompt -> answer), their held-out examples, and the training mixtures.

Skills: `arith` "add 47+5=" -> "52", `reverse` "rev abcd=" -> "dcba", `sort` "sort dbca=" -> "abcd", and the
`copy` task "copy abcd=" -> "abcd" that teaches the base the prompt format.
"""

from __future__ import annotations

import random

from mmmo.demo.params import DemoParams

SKILLS: tuple[str, ...] = ("arith", "reverse", "sort")

_LETTERS = "abcdefghijklmnopqrstuvwxyz"
# Every character a prompt or answer can hold; the tokenizer maps each to one token.
CHARS = _LETTERS + "0123456789" + " +=\n"
_OPS = {"copy": "copy", "arith": "add", "reverse": "rev", "sort": "sort"}


def sample_example(skill: str, rng: random.Random, word_len: tuple[int, int] = (4, 7)) -> tuple[str, str]:
    """One (prompt, answer) pair of a skill (`copy` or one of SKILLS); prompts end with '='."""
    if skill == "arith":
        a, b = rng.randint(10, 99), rng.randint(0, 9)
        return f"add {a}+{b}=", str(a + b)
    word = "".join(rng.choice(_LETTERS) for _ in range(rng.randint(*word_len)))
    if skill == "copy":
        answer = word
    elif skill == "reverse":
        answer = word[::-1]
    elif skill == "sort":
        answer = "".join(sorted(word))
    else:
        raise ValueError(f"unknown skill {skill!r}")
    return f"{_OPS[skill]} {word}=", answer


def heldout_examples(skill: str, params: DemoParams) -> list[tuple[str, str]]:
    """The evaluation examples of a skill: distinct prompts, never used in training."""
    rng = random.Random(f"{params.seed}-eval-{skill}")
    seen: dict[str, str] = {}
    while len(seen) < params.eval_examples:
        prompt, answer = sample_example(skill, rng, params.word_len)
        seen.setdefault(prompt, answer)
    return list(seen.items())


def base_mixture(params: DemoParams) -> dict[str, float]:
    """The base's training mixture: mostly the copy task (the format), each skill rarely."""
    shares = dict(zip(SKILLS, params.base_skill_shares))
    return {"copy": 1.0 - sum(shares.values()), **shares}


def expert_mixture(params: DemoParams, skill: str) -> dict[str, float]:
    """An expert's mixture: its skill, plus a replay of the base's mixture so that it keeps the rest."""
    keep = 1.0 - params.expert_skill_share
    mix = {s: keep * w for s, w in base_mixture(params).items()}
    mix[skill] += params.expert_skill_share
    return mix


class SkillSampler:
    """Draws training examples from a skill mixture, skipping every held-out prompt."""

    def __init__(self, mixture: dict[str, float], heldout: set[str], seed: str, word_len: tuple[int, int]):
        self.skills = list(mixture)
        self.weights = [mixture[s] for s in self.skills]
        self.heldout = heldout
        self.rng = random.Random(seed)
        self.word_len = word_len

    def draw(self, n: int) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for skill in self.rng.choices(self.skills, self.weights, k=n):
            while True:
                prompt, answer = sample_example(skill, self.rng, self.word_len)
                if prompt not in self.heldout:
                    break
            out.append((prompt, answer))
        return out
