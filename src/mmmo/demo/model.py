"""The demo's tiny character-level Llama: its tokenizer, a fresh model, training batches, the training loop."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmmo.demo.params import DEFAULT_PARAMS, DemoParams
from mmmo.demo.skills import CHARS, SkillSampler

_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")


def make_tokenizer(chars: str = CHARS, model_max_length: int = DEFAULT_PARAMS.max_positions) -> Any:
    """A character-level `PreTrainedTokenizerFast` over `chars` that prepends <s>, like Llama's."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([*_SPECIALS, *chars])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    # "[\s\S]": every character, newline and space included, becomes its own piece
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=model_max_length,
    )


def encode_batch(
    examples: list[tuple[str, str]], vocab: dict[str, int], device: Any
) -> tuple[Any, Any, Any]:
    """Right-padded ids, attention mask and labels (loss on the answer and its newline only)."""
    import torch

    bos, pad = vocab["<s>"], vocab["<pad>"]
    rows = [([bos] + [vocab[c] for c in p], [vocab[c] for c in a + "\n"]) for p, a in examples]
    width = max(len(p) + len(a) for p, a in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, a) in enumerate(rows):
        n = len(p) + len(a)
        ids[i, :n] = torch.tensor(p + a)
        labels[i, len(p) : n] = torch.tensor(a)
        mask[i, :n] = 1
    return ids.to(device), mask.to(device), labels.to(device)


def make_model(params: DemoParams, tokenizer: Any) -> Any:
    """A freshly initialised tiny `LlamaForCausalLM` (seeded)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=params.hidden_size,
        intermediate_size=params.intermediate_size,
        num_hidden_layers=params.layers,
        num_attention_heads=params.heads,
        num_key_value_heads=params.heads,
        max_position_embeddings=params.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(params.seed)
    return LlamaForCausalLM(config)


def train(
    model: Any,
    sampler: SkillSampler,
    vocab: dict[str, int],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    warmup_steps: int,
    seed: int,
    device: Any,
) -> float:
    """AdamW with linear warmup and cosine decay; returns the mean loss of the last 10% of steps."""
    import math

    import torch

    torch.manual_seed(seed)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
    tail: list[float] = []
    for step in range(steps):
        ids, mask, labels = encode_batch(sampler.draw(batch_size), vocab, device)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step >= steps - max(1, steps // 10):
            tail.append(loss.item())
    model.eval()
    return sum(tail) / max(1, len(tail))


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` intra-op torch threads (restored after).

    For models this small one thread is the robust choice: on a busy machine, two threads per
    process were measured 25x slower than one (OpenMP threads waiting on each other).
    """
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def save_model(model: Any, tokenizer: Any, path: Path) -> None:
    """Save a trained model and its tokenizer to `path` (safetensors, moved to CPU first)."""
    import torch

    path.mkdir(parents=True, exist_ok=True)
    model.to(torch.device("cpu"))
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
