"""A self-contained demo problem: a tiny Llama base and three experts on synthetic tasks, with lm-eval tasks.

Skills (prompt -> answer): `arith` "add 47+5=" -> "52", `reverse` "rev abcd=" -> "dcba", `sort`
"sort dbca=" -> "abcd". The base learns the prompt format on a copy task ("copy abcd=" -> "abcd") and
sees each skill only rarely; each expert is fine-tuned from it on one skill (plus a replay of the
base's mixture), so the task vectors stay small and merging them actually pays off: the base is weak
at all three, each expert at its own one, a merge at several. Built locally, with no hub access.

Its parts: `params` (what determines a build), `skills` (the synthetic tasks, their data and mixtures),
`model` (the tiny character-level Llama and its training), `files` (the task files and demo.yaml a build
writes) and `build` (building into a cached folder). Every public name is importable from `mmmo.demo`.
"""

from mmmo.demo.build import STAMP_NAME, DemoPaths, build_demo, build_lock, is_complete_build, train_expert
from mmmo.demo.files import (
    TASK_PREFIX,
    demo_spec,
    task_yaml,
    write_data_files,
    write_demo_yaml,
    write_task_files,
)
from mmmo.demo.model import encode_batch, make_model, make_tokenizer, save_model, torch_threads, train
from mmmo.demo.params import BUILD_VERSION, DEFAULT_PARAMS, DemoParams
from mmmo.demo.skills import (
    CHARS,
    SKILLS,
    SkillSampler,
    base_mixture,
    expert_mixture,
    heldout_examples,
    sample_example,
)

__all__ = [
    "BUILD_VERSION",
    "CHARS",
    "DEFAULT_PARAMS",
    "SKILLS",
    "STAMP_NAME",
    "TASK_PREFIX",
    "DemoParams",
    "DemoPaths",
    "SkillSampler",
    "base_mixture",
    "build_demo",
    "build_lock",
    "demo_spec",
    "encode_batch",
    "expert_mixture",
    "heldout_examples",
    "is_complete_build",
    "make_model",
    "make_tokenizer",
    "sample_example",
    "save_model",
    "task_yaml",
    "torch_threads",
    "train",
    "train_expert",
    "write_data_files",
    "write_demo_yaml",
    "write_task_files",
]
