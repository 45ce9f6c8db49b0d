"""A tiny bigram Llama, a char-level tokenizer and two lm-eval tasks whose scores are known by construction.

Every layer's weights are zero, so the residual stream at a position is just the embedding of the token
there: the model is a bigram table, and `set_bigram` writes into it (in place) which token follows which.
The tasks ask "letter -> digit": generate_until tasks (exact_match), a multiple_choice task (acc), and a
group of the two generation tasks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml

LETTERS = "abcdef"
DIGITS = "123456"
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
CHARS = LETTERS + DIGITS + "\n :"
GEN_TASK = "mmmo_test_gen"
GEN4_TASK = "mmmo_test_gen4"  # the generation task on the first four letters only
MC_TASK = "mmmo_test_mc"
GROUP = "mmmo_test_group"  # GEN_TASK + GEN4_TASK, exact_match weighted by size
# Letter i maps to digit i: the right answer of both tasks.
RIGHT = {letter: digit for letter, digit in zip(LETTERS, DIGITS)}


def make_tokenizer() -> Any:
    """A character-level PreTrainedTokenizerFast over CHARS (one token per character; <s> prepended)."""
    from mmmo.demo import make_tokenizer as char_tokenizer

    return char_tokenizer(CHARS, 32)


def make_model(tokenizer: Any) -> Any:
    """A one-layer LlamaForCausalLM with every weight zero except one-hot embeddings (a blank bigram table)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = len(tokenizer)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    assert vocab <= config.hidden_size
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:  # RMSNorm weights stay 1
                p.zero_()
        model.model.embed_tokens.weight[:, :vocab].copy_(torch.eye(vocab))
    return model


def set_bigram(model: Any, tokenizer: Any, answers: dict[str, str]) -> None:
    """Rewrite lm_head in place: after letter L comes answers[L], after any digit comes a newline."""
    vocab = tokenizer.get_vocab()
    table = torch.zeros_like(model.lm_head.weight)
    for letter, digit in answers.items():
        table[vocab[digit], vocab[letter]] = 10.0
    for digit in DIGITS:
        table[vocab["\n"], vocab[digit]] = 10.0
    with torch.no_grad():
        model.lm_head.weight.copy_(table)


def write_tasks(root: Path) -> Path:
    """Write the task and group YAMLs and their JSONL data under root/tasks; returns the tasks folder."""
    tasks = root / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    rows = [
        {"prompt": letter, "answer": RIGHT[letter], "choices": list(DIGITS), "label": i}
        for i, letter in enumerate(LETTERS)
    ]
    data = tasks / "letters.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data4 = tasks / "letters4.jsonl"
    data4.write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))

    def common(path: Path) -> dict[str, Any]:
        return {
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(path)}},
            "test_split": "test",
            "doc_to_text": "{{prompt}}",
        }

    def gen(name: str, path: Path) -> dict[str, Any]:
        return {
            "task": name,
            **common(path),
            "output_type": "generate_until",
            "doc_to_target": "{{answer}}",
            "generation_kwargs": {"until": ["\n"], "do_sample": False, "max_gen_toks": 4},
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        }

    mc = {
        "task": MC_TASK,
        **common(data),
        "output_type": "multiple_choice",
        "doc_to_choice": "{{choices}}",
        "doc_to_target": "label",
        "target_delimiter": "",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }
    group = {
        "group": GROUP,
        "task": [GEN_TASK, GEN4_TASK],
        "aggregate_metric_list": [{"metric": "exact_match", "aggregation": "mean", "weight_by_size": True}],
    }
    for name, cfg in [
        (GEN_TASK, gen(GEN_TASK, data)),
        (GEN4_TASK, gen(GEN4_TASK, data4)),
        (MC_TASK, mc),
        (GROUP, group),
    ]:
        (tasks / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return tasks


def count_batch_size_probes(monkeypatch: Any) -> list[int]:
    """Spy on lm-eval's automatic batch-size probe (HFLM's own private method): the sizes it found, in order."""
    from lm_eval.models.huggingface import HFLM

    probes: list[int] = []
    probe = HFLM._detect_batch_size

    def counted(self: Any, *args: Any, **kwargs: Any) -> int:
        probes.append(size := probe(self, *args, **kwargs))
        return size

    monkeypatch.setattr(HFLM, "_detect_batch_size", counted)
    return probes
