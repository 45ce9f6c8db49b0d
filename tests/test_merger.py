"""The in-memory Merger, recipes and export, on tiny random Llama folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from tiny_models import make_base, make_expert, make_family, read_weights

from mmmo.merge.kernels.fast_merge import merge_tensor
from mmmo.merge.merger import Merger, MergerOptions
from mmmo.merge.methods.sparsify import dare_generator
from mmmo.merge.recipes.recipe import MergeRecipe, to_mergekit_yaml
from mmmo.merge.recipes.recipe_reader import load_mergekit_recipe
from mmmo.merge.recipes.recipe_run import run_recipe
from mmmo.merge.recipes.save import save_merged
from mmmo.merge.sources.layers import layer_group_of
from mmmo.runtime.errors import MmmoError

W3 = torch.tensor([0.7, 0.4, 0.9], dtype=torch.float64)
D3 = torch.tensor([0.5, 0.3, 0.8], dtype=torch.float64)


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """A base and three experts, sharded (exercises the safetensors index)."""
    return make_family(tmp_path_factory.mktemp("family"), 3, shard_size="20KB")


@pytest.fixture(scope="module")
def tied_family(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    return make_family(tmp_path_factory.mktemp("tied"), 2, seed=1, tie_word_embeddings=True)


@pytest.fixture(scope="module")
def ties_merger(family: tuple[Path, list[Path]]) -> Merger:
    base, experts = family
    return Merger(base, experts, method="ties")


def _expected(method: str, base: Path, experts: list[Path], w: torch.Tensor, d: torch.Tensor | None, seed: int = 0,
              dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Tensor-by-tensor merge with the pure functions, straight from the files (differences taken in float32)."""
    b = read_weights(base)
    ex = [read_weights(e) for e in experts]
    out = {}
    for name, t in b.items():
        deltas = torch.stack([e[name] - t for e in ex]).to(dtype)
        gens = [dare_generator(seed, i, name) for i in range(len(ex))]
        out[name] = merge_tensor(method, t.to(dtype), deltas, w, d, generators=gens)
    return out


def test_layer_group_of() -> None:
    assert [layer_group_of(f"model.layers.{i}.mlp.up_proj.weight", 4, 2) for i in range(4)] == [0, 0, 1, 1]
    assert [layer_group_of(f"model.layers.{i}.self_attn.q_proj.weight", 4, 3) for i in range(4)] == [0, 0, 1, 2]
    assert layer_group_of("model.embed_tokens.weight", 4, 3) == 0
    assert layer_group_of("model.norm.weight", 4, 3) == 2
    assert layer_group_of("lm_head.weight", 4, 3) == 2
    assert layer_group_of("model.layers.3.mlp.up_proj.weight", 4, 1) == 0
    assert layer_group_of("model.layers.11.input_layernorm.weight", 12, 12) == 11


def test_task_arithmetic_one_hot_reproduces_the_expert_exactly(family: tuple[Path, list[Path]]) -> None:
    base, experts = family
    merger = Merger(base, experts, method="task_arithmetic")
    merger.apply(torch.tensor([0.0, 1.0, 0.0]))
    live = merger.live_state_dict()
    expert = read_weights(experts[1])
    assert set(live) == set(expert)
    for name, t in expert.items():
        assert torch.equal(live[name], t), name


def test_matches_the_pure_functions_tensor_by_tensor(family: tuple[Path, list[Path]]) -> None:
    base, experts = family
    for method in ("linear", "ties", "dare_ties", "dare_linear"):
        merger = Merger(base, experts, method=method, seed=3)
        got = merger.merged_state_dict(W3, D3)
        want = _expected(method, base, experts, W3, D3 if method != "linear" else None, seed=3)
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-6, atol=1e-7, msg=f"{method} {name}")


def test_apply_writes_in_place_and_returns_mean_abs_change(
    family: tuple[Path, list[Path]], ties_merger: Merger
) -> None:
    base, _ = family
    ptrs = {n: p.data_ptr() for n, p in ties_merger.model.named_parameters()}
    stat = ties_merger.apply(W3, D3)
    assert {n: p.data_ptr() for n, p in ties_merger.model.named_parameters()} == ptrs
    live = ties_merger.live_state_dict()
    b = read_weights(base)
    total = sum((live[n].double() - b[n].double()).abs().sum().item() for n in b)
    numel = sum(t.numel() for t in b.values())
    assert stat == pytest.approx(total / numel, rel=1e-5)
    assert stat > 0
    # the live model is the merge
    want = ties_merger.merged_state_dict(W3, D3)
    assert all(torch.equal(live[n], want[n]) for n in want)


def test_same_candidate_twice_is_bit_identical(family: tuple[Path, list[Path]]) -> None:
    base, experts = family
    merger = Merger(base, experts, method="dare_ties", seed=5)
    merger.apply(W3, D3)
    first = merger.live_state_dict()
    merger.apply(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.9, 0.9, 0.9]))
    merger.apply(W3, D3)
    second = merger.live_state_dict()
    assert all(torch.equal(first[n], second[n]) for n in first)
    other_seed = Merger(base, experts, method="dare_ties", seed=6).merged_state_dict(W3, D3)
    assert not all(torch.equal(first[n], other_seed[n]) for n in first)


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_streaming_equals_resident(family: tuple[Path, list[Path]], method: str) -> None:
    base, experts = family
    resident = Merger(base, experts, method=method, layer_groups=2)
    streamed = Merger(base, experts, method=method, layer_groups=2, max_resident_bytes=0)
    assert resident.resident and not streamed.resident
    w = torch.tensor([[0.7, 0.2], [0.4, 0.5], [0.9, 0.1]])
    d = torch.tensor([[0.5, 0.9], [0.3, 0.2], [0.8, 0.6]])
    s1, s2 = resident.apply(w, d), streamed.apply(w, d)
    assert s1 == s2
    a, b = resident.live_state_dict(), streamed.live_state_dict()
    assert all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize("method", ["ties", "dare_ties"])
def test_precomputed_tables_change_nothing_and_respect_the_budget(family: tuple[Path, list[Path]],
                                                                  method: str) -> None:
    base, experts = family
    fast = Merger(base, experts, method=method, layer_groups=2, seed=2)
    plain = Merger(base, experts, method=method, layer_groups=2, seed=2, precompute=False)
    # ties: float32 magnitude + int32 position; DARE: draw, sorted draw, prefix sum (float32 each)
    assert fast.precomputed and fast.precompute_bytes == fast.numel * 3 * (8 if method == "ties" else 12)
    assert not plain.precomputed and plain.precompute_bytes == 0
    tight = Merger(base, experts, method=method, max_resident_bytes=fast.store_bytes)  # vectors fit, tables not
    assert tight.resident and not tight.precomputed
    w = torch.tensor([[0.7, 0.2], [0.4, 0.5], [0.9, 0.1]])
    d = torch.tensor([[0.5, 0.9], [0.3, 0.2], [0.8, 0.6]])
    assert fast.apply(w, d) == plain.apply(w, d)
    a, b = fast.live_state_dict(), plain.live_state_dict()
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_layer_group_weights_land_on_their_layers(family: tuple[Path, list[Path]]) -> None:
    base, experts = family
    merger = Merger(base, experts, method="task_arithmetic", layer_groups=2)
    # expert 0 on group 0 (embeddings, layers 0-1), nothing on group 1 (layers 2-3, final norm, head)
    merger.apply(torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))
    live, b, e0 = merger.live_state_dict(), read_weights(base), read_weights(experts[0])
    for name in live:
        want = e0 if merger.group_of(name) == 0 else b
        assert torch.equal(live[name], want[name]), name
    assert merger.group_of("model.layers.1.mlp.up_proj.weight") == 0
    assert merger.group_of("model.layers.2.mlp.up_proj.weight") == 1
    with pytest.raises(MmmoError, match=r"weights must have shape \(3, 2\)"):
        merger.apply(torch.ones(3, 3))


def test_tied_embeddings_are_written_once(tied_family: tuple[Path, list[Path]]) -> None:
    base, experts = tied_family
    merger = Merger(base, experts, method="dare_linear", seed=2)
    model = merger.model
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert "lm_head.weight" not in merger.names
    w, d = torch.tensor([0.6, 0.8]), torch.tensor([0.4, 0.7])
    merger.apply(w, d)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    want = _expected("dare_linear", base, experts, w, d, seed=2)
    torch.testing.assert_close(model.lm_head.weight.data, want["model.embed_tokens.weight"], rtol=1e-6, atol=1e-7)


def test_apply_source_and_reset(family: tuple[Path, list[Path]], ties_merger: Merger) -> None:
    base, experts = family
    gap = ties_merger.apply_source(2)
    live = ties_merger.live_state_dict()
    e2, b = read_weights(experts[2]), read_weights(base)
    assert all(torch.equal(live[n], e2[n]) for n in e2)
    numel = sum(t.numel() for t in b.values())
    assert gap == pytest.approx(sum((e2[n].double() - b[n].double()).abs().sum().item() for n in b) / numel)
    # summed in float64 over the stored task vectors, like a merge's statistic
    exact = sum(ties_merger.task_vectors.stored(n)[1][2].double().abs().sum().item() for n in b) / numel
    assert gap == pytest.approx(exact, rel=1e-12)
    ties_merger.reset()
    live = ties_merger.live_state_dict()
    assert all(torch.equal(live[n], b[n]) for n in b)


def test_options_come_as_a_record_or_as_its_fields(family: tuple[Path, list[Path]]) -> None:
    base, experts = family
    options = MergerOptions(method="ties", layer_groups=2, seed=1)
    by_record, by_fields = Merger(base, experts, options), Merger(base, experts, method="ties", layer_groups=2, seed=1)
    assert by_record.options == by_fields.options and by_record.plan == by_fields.plan
    assert by_record.apply(W3, D3) == by_fields.apply(W3, D3)
    with pytest.raises(TypeError, match="not both"):
        Merger(base, experts, options, seed=2)
    with pytest.raises(MmmoError, match="layer_groups must be >= 1"):
        MergerOptions(method="ties", layer_groups=0)
    with pytest.raises(MmmoError, match="floating-point"):
        MergerOptions(method="ties", dtype=torch.int32)


def test_bfloat16_merge_runs_in_bfloat16(family: tuple[Path, list[Path]]) -> None:
    base, experts = family
    merger = Merger(base, experts, method="ties", dtype=torch.bfloat16)
    merger.apply(W3, D3)
    assert merger.model.dtype == torch.bfloat16
    want = _expected("ties", base, experts, W3, D3, dtype=torch.bfloat16)
    got = merger.live_state_dict()
    assert all(got[n].dtype == torch.bfloat16 and torch.equal(got[n], want[n]) for n in want)


# ---- errors


def test_mismatched_shapes_name_the_tensor(family: tuple[Path, list[Path]], tmp_path: Path) -> None:
    base, experts = family
    odd = make_base(tmp_path / "odd", intermediate_size=24)
    with pytest.raises(MmmoError) as info:
        Merger(base, [experts[0], odd], method="ties")
    msg = str(info.value)
    assert "\n" not in msg
    assert "model.layers.0.mlp.down_proj.weight" in msg and str(odd) in msg and "[16, 32]" in msg


def test_missing_inputs_and_pickles_are_one_line_errors(family: tuple[Path, list[Path]], tmp_path: Path) -> None:
    base, experts = family
    with pytest.raises(MmmoError, match="model folder not found"):
        Merger(base, [tmp_path / "nope"], method="ties")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((base / "config.json").read_text())
    with pytest.raises(MmmoError, match="no weights found"):
        Merger(base, [empty], method="ties")
    # a pickled checkpoint is refused unless allowed
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((base / "config.json").read_text())
    torch.save(read_weights(experts[0]), pickled / "pytorch_model.bin")
    with pytest.raises(MmmoError, match="pickled") as info:
        Merger(base, [pickled], method="task_arithmetic")
    assert "\n" not in str(info.value)
    merger = Merger(base, [pickled], method="task_arithmetic", allow_pickle=True)
    merger.apply(torch.tensor([1.0]))
    e0 = read_weights(experts[0])
    assert all(torch.equal(v, e0[k]) for k, v in merger.live_state_dict().items())
    # another architecture
    other = tmp_path / "other"
    other.mkdir()
    cfg = json.loads((base / "config.json").read_text())
    cfg["model_type"], cfg["architectures"] = "mistral", ["MistralForCausalLM"]
    (other / "config.json").write_text(json.dumps(cfg))
    shutil.copy(experts[0] / "model.safetensors.index.json", other)
    for shard in experts[0].glob("*.safetensors"):
        shutil.copy(shard, other)
    with pytest.raises(MmmoError, match="architecture mismatch"):
        Merger(base, [other], method="ties")
    with pytest.raises(MmmoError, match="unsupported merge method"):
        Merger(base, experts, method="nearswap")


# ---- export


def test_saved_folder_loads_and_generates(family: tuple[Path, list[Path]], ties_merger: Merger,
                                          tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base, experts = family
    ties_merger.apply(W3, D3)
    recipe = MergeRecipe.from_arrays(base, experts, "ties", W3, D3, dtype="float32")
    out = save_merged(ties_merger.live_state_dict(), tmp_path / "out", base_path=base, recipe=recipe, max_shard_bytes=8_000)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors.index.json", "tokenizer.json", "README.md",
            "mergekit_config.yml"} <= names
    assert len([n for n in names if n.endswith(".safetensors")]) > 1
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left behind
    model = AutoModelForCausalLM.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    ids = tok("hello world", return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**ids).logits, ties_merger.model(**ids).logits)
    gen = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert gen.shape == (1, ids["input_ids"].shape[1] + 4)
    assert "ties" in (out / "README.md").read_text()
    assert load_mergekit_recipe(out / "mergekit_config.yml").method == "ties"


def test_save_refuses_non_empty_folder_and_is_atomic(family: tuple[Path, list[Path]], ties_merger: Merger,
                                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mmmo.merge.recipes.save as save_mod

    base, _ = family
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(MmmoError, match="not empty"):
        save_merged(ties_merger.live_state_dict(), out, base_path=base)
    save_merged(ties_merger.live_state_dict(), out, base_path=base, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()

    def boom(*a: object, **k: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(save_mod, "write_weights", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        save_merged(ties_merger.live_state_dict(), tmp_path / "fresh", base_path=base)
    with pytest.raises(RuntimeError, match="disk full"):
        save_merged(ties_merger.live_state_dict(), out, base_path=base, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing half-written
    assert (out / "model.safetensors").is_file()  # the old folder survives a failed overwrite


# ---- recipes


def test_recipe_reading_resolves_paths_and_parameters(family: tuple[Path, list[Path]]) -> None:
    base, experts = family
    root = base.parent
    (root / "r.yaml").write_text(
        "merge_method: dare_ties\nbase_model: base\ndtype: bfloat16\n"
        "parameters: {lambda: 0.8, rescale: false, density: 0.6}\n"
        "models:\n  - model: expert0\n    parameters: {weight: 0.5, density: 0.3}\n"
        "  - model: ./expert1\n    parameters: {weight: 0.25}\n"
        "  - model: base\n"
    )
    r = load_mergekit_recipe(root / "r.yaml")
    assert r.method == "dare_ties" and r.base_model == str(base.resolve())
    assert [m.path for m in r.models] == [str(experts[0].resolve()), str(experts[1].resolve())]
    assert r.weights().tolist() == [[0.5], [0.25]]
    assert r.densities().tolist() == [[0.3], [0.6]]  # the global density is the default
    assert (r.lambda_, r.rescale, r.dtype, r.normalize, r.seed) == (0.8, False, "bfloat16", None, 0)


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("merge_method: ties\nslices: []\n", "slices: not supported"),
        ("merge_method: nearswap\nbase_model: base\nmodels: [{model: expert0}]\n", "'nearswap' is not supported"),
        ("merge_method: ties\nbase_model: base\nmodels:\n  - model: expert0\n    parameters: {weight: [0.1, 0.9]}\n",
         "gradient lists are not supported"),
        ("merge_method: ties\nbase_model: base\nmodels:\n  - model: expert0\n    parameters: {weight: 1, gamma: 0.1}\n",
         "models\\[0\\].parameters.gamma: not supported"),
        ("merge_method: ties\nbase_model: base\nmodels:\n  - model: expert0\n", "weight: required"),
        ("merge_method: ties\nbase_model: base\nmodels:\n  - model: missing\n    parameters: {weight: 1}\n",
         "model folder not found"),
        ("merge_method: ties\nbase_model: base\ntokenizer_source: union\nmodels: [{model: expert0}]\n",
         "tokenizer_source"),
    ],
)
def test_unsupported_recipes_are_one_line_errors(family: tuple[Path, list[Path]], yaml_text: str, message: str,
                                                 tmp_path: Path) -> None:
    base, _ = family
    f = base.parent / f"bad-{abs(hash(yaml_text))}.yaml"
    f.write_text(yaml_text)
    with pytest.raises(MmmoError, match=message) as info:
        load_mergekit_recipe(f)
    assert "\n" not in str(info.value)


def test_recipe_round_trips_through_mergekit_yaml(family: tuple[Path, list[Path]], tmp_path: Path) -> None:
    base, experts = family
    w = torch.tensor([[0.7, 0.2], [0.4, 0.4], [0.9, 0.1]], dtype=torch.float64)
    d = torch.tensor([[0.5, 0.9], [0.3, 0.2], [0.8, 0.8]], dtype=torch.float64)
    recipe = MergeRecipe.from_arrays(base, experts, "dare_ties", w, d, lambda_=0.9, dtype="float32", seed=11)
    text = to_mergekit_yaml(recipe)
    doc = yaml.safe_load(text)
    assert isinstance(doc["models"][0]["parameters"]["weight"], list)  # per-layer filters
    assert doc["models"][1]["parameters"]["weight"] == 0.4  # equal groups collapse to a scalar
    (tmp_path / "r.yml").write_text(text)
    back = load_mergekit_recipe(tmp_path / "r.yml")
    assert back.layer_groups == 2 and back.seed == 11 and back.lambda_ == 0.9
    assert torch.equal(back.weights(), w) and torch.equal(back.densities(), d)


def test_run_recipe_matches_the_merger(family: tuple[Path, list[Path]], tmp_path: Path) -> None:
    base, experts = family
    recipe = MergeRecipe.from_arrays(base, experts, "dare_ties", W3, D3, dtype="float32", seed=4)
    (tmp_path / "r.yml").write_text(to_mergekit_yaml(recipe))
    out = run_recipe(tmp_path / "r.yml", tmp_path / "merged")
    saved = read_weights(out)
    want = Merger(base, experts, method="dare_ties", seed=4).merged_state_dict(W3, D3)
    assert set(saved) == set(want) and all(torch.equal(saved[n], want[n]) for n in want)
    again = run_recipe(tmp_path / "r.yml", tmp_path / "merged", seed=5, overwrite=True)
    assert not all(torch.equal(read_weights(again)[n], want[n]) for n in want)
    with pytest.raises(MmmoError, match="not empty"):
        run_recipe(tmp_path / "r.yml", tmp_path / "merged")


def test_expert_helper_is_deterministic(tmp_path: Path) -> None:
    base = make_base(tmp_path / "b")
    a = read_weights(make_expert(base, tmp_path / "x", seed=1))
    b = read_weights(make_expert(base, tmp_path / "y", seed=1))
    assert all(torch.equal(a[n], b[n]) for n in a)
