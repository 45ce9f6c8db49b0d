"""The files a demo build writes beside its models: lm-eval task YAMLs, their held-out data, and demo.yaml."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from mmmo.demo.params import BUILD_VERSION, DemoParams
from mmmo.demo.skills import SKILLS, heldout_examples

TASK_PREFIX = "demo_"
_SPEC_HEADER = "# The demo search: written by `mmmo demo`; paths are relative to this file.\n"


def task_yaml(skill: str, data_file: Path) -> dict[str, Any]:
    """The lm-eval task config of a skill, reading its held-out examples from `data_file`."""
    return {
        "task": f"{TASK_PREFIX}{skill}",
        "dataset_path": "json",
        # `datasets` resolves relative data_files against the process's cwd, not the YAML's folder,
        # so the path is absolute (rewritten by build_demo when the folder has moved).
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "prompt",  # a column name: no Jinja template to compile per document
        "doc_to_target": "answer",
        "generation_kwargs": {"until": ["\n"], "do_sample": False, "temperature": 0.0, "max_gen_toks": 8},
        "metric_list": [
            {
                "metric": "exact_match",
                "aggregation": "mean",
                "higher_is_better": True,
                "ignore_case": True,
                "ignore_punctuation": False,
            }
        ],
        "metadata": {"version": BUILD_VERSION},
    }


class _Dumper(yaml.SafeDumper):
    """Writes strings holding a newline in double quotes ("\\n"), which YAML's default style garbles."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = '"' if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


def _write_if_changed(path: Path, text: str) -> None:
    if path.is_file() and path.read_text() == text:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_task_files(tasks_dir: Path, final_tasks_dir: Path) -> None:
    """The task YAMLs in `tasks_dir`, pointing at the JSONL files as they will sit in `final_tasks_dir`."""
    for skill in SKILLS:
        data_file = final_tasks_dir.resolve() / "data" / f"{skill}.jsonl"
        text = yaml.dump(task_yaml(skill, data_file), Dumper=_Dumper, sort_keys=False, allow_unicode=True)
        _write_if_changed(tasks_dir / f"{TASK_PREFIX}{skill}.yaml", text)


def write_data_files(tasks_dir: Path, params: DemoParams) -> None:
    """Each skill's held-out examples as `tasks_dir/data/<skill>.jsonl`, one {"prompt", "answer"} a line."""
    data = tasks_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    for skill in SKILLS:
        lines = [json.dumps({"prompt": p, "answer": a}) for p, a in heldout_examples(skill, params)]
        (data / f"{skill}.jsonl").write_text("\n".join(lines) + "\n")


def demo_spec(params: DemoParams, prefix: str = "", output_dir: str = "runs/demo") -> dict[str, Any]:
    """The demo's search spec; model and task paths are `prefix` + the demo-relative path."""
    objectives: list[dict[str, Any]] = [
        {"name": s, "task": f"{TASK_PREFIX}{s}", "metric": "exact_match", "limit": params.eval_limit}
        for s in SKILLS
    ]
    objectives.append({"name": "sparsity", "type": "sparsity"})
    return {
        "name": "demo",
        "base_model": f"{prefix}base",
        "models": [{"path": f"{prefix}experts/{s}", "name": s} for s in SKILLS],
        "merge": {"method": "dare_ties", "dtype": "float32", "seed": 0},
        "objectives": objectives,
        "tasks_dir": f"{prefix}tasks",
        "optimizer": {"strategy": "mm-mo", "initial": 10, "batches": 4, "candidates": 10, "batch_size": 5},
        "evaluation": {"device": "auto", "batch_size": 64},
        "output": {"dir": output_dir},
    }


def write_demo_yaml(path: Path, params: DemoParams) -> None:
    """The demo's search spec as a YAML file at `path`, its paths relative to the file's folder."""
    path.write_text(_SPEC_HEADER + yaml.safe_dump(demo_spec(params), sort_keys=False))
