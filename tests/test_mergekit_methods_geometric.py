"""slerp, nuslerp, multislerp, model_stock and karcher equal mergekit 0.1.5 tensor for tensor, bit for bit.

mergekit's maths for these methods is deterministic, and mmmo repeats it operation for operation on each model
rebuilt as base + task vector; the tiny experts are built so that rebuild is exact (see tests/tiny_models.py), so
every comparison with mergekit here is `torch.equal` on CPU in float32. Two architectures: Llama, and Qwen2 (q/k/v
biases, tied embeddings).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

pytest.importorskip("mergekit")

from tiny_models import make_family, read_weights

from mmmo.merge.kernels.fast_merge import merge_tensor
from mmmo.merge.kernels.geometric import GeometricMerge
from mmmo.merge.merger import Merger
from mmmo.merge.methods.interpolate import nuslerp, slerp
from mmmo.merge.methods.registry import METHODS, method_info
from mmmo.merge.recipes.recipe import MergeRecipe, to_mergekit_yaml
from mmmo.merge.recipes.recipe_reader import load_mergekit_recipe
from mmmo.merge.recipes.recipe_run import run_recipe
from mmmo.runtime.errors import MmmoError

W3 = [0.5, 0.3, 0.4]


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp(f"geo-{request.param}")
    return make_family(root, 3, seed=3, architecture=request.param, hidden_size=32, intermediate_size=64)


def run_mergekit(doc: dict[str, Any], out: Path) -> dict[str, torch.Tensor]:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    run_merge(MergeConfiguration.model_validate(doc), str(out), MergeOptions(quiet=True, write_model_card=False))
    return read_weights(out)


def assert_identical(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert set(ours) == set(theirs)
    for name, t in theirs.items():
        assert ours[name].dtype == t.dtype, name
        assert torch.equal(ours[name], t), f"{name}: max |diff| {(ours[name] - t).abs().max().item():.3g}"


# (method, number of experts, weights or None, parameters, with a base_model)
CASES = [
    ("slerp", 1, None, {"t": 0.3}, True),
    ("slerp", 1, None, {"t": [0.2, 0.8]}, True),  # per layer group: mergekit's per-layer filters
    ("nuslerp", 2, [0.7, 0.4], {}, True),
    ("nuslerp", 2, [0.7, 0.4], {"nuslerp_flatten": 0.0}, True),  # angles per row
    ("nuslerp", 2, [0.7, 0.4], {"nuslerp_flatten": 0.0, "nuslerp_row_wise": 1.0}, True),  # per column
    ("nuslerp", 2, [0.2, 0.9], {}, False),  # the models themselves
    ("multislerp", 3, W3, {}, True),
    ("multislerp", 3, W3, {"normalize_weights": 0.0}, True),
    ("multislerp", 3, W3, {}, False),
    ("model_stock", 3, None, {}, True),
    ("model_stock", 3, None, {"filter_wise": 1.0}, True),
    ("karcher", 3, None, {}, True),  # the base is one more point, after the models
    ("karcher", 2, None, {"max_iter": 3.0}, False),
]


def case_recipe(family: tuple[Path, list[Path]], method: str, n: int, weights: list[float] | None,
                parameters: dict[str, Any], with_base: bool) -> MergeRecipe:
    base, experts = family
    w = torch.tensor(weights if weights is not None else [1.0] * n, dtype=torch.float64)
    recipe = MergeRecipe.from_arrays(base, experts[:n], method, w, dtype="float32", parameters=dict(parameters))
    if not with_base:
        recipe.base_model = None
    return recipe


def merger_for(recipe: MergeRecipe) -> Merger:
    return Merger(recipe.base_path, [m.path for m in recipe.models], method=recipe.method,
                  layer_groups=recipe.layer_groups, with_base=recipe.with_base)


@pytest.mark.parametrize(("method", "n", "weights", "parameters", "with_base"), CASES)
def test_same_tensors_as_mergekit(family: tuple[Path, list[Path]], tmp_path: Path, method: str, n: int,
                                  weights: list[float] | None, parameters: dict[str, Any], with_base: bool) -> None:
    recipe = case_recipe(family, method, n, weights, parameters, with_base)
    doc = yaml.safe_load(to_mergekit_yaml(recipe))
    assert ("base_model" in doc) == with_base
    theirs = run_mergekit(doc, tmp_path / "mk")
    ours = merger_for(recipe).merged_state_dict(recipe.weights(), None, recipe.parameters)
    assert_identical(ours, theirs)


def test_interpolations_move_the_model(family: tuple[Path, list[Path]]) -> None:
    """Not a vacuous match: each merge differs from the base and from every expert, by amounts that follow t."""
    base, experts = family
    b, e0 = read_weights(base), read_weights(experts[0])
    merger = Merger(base, experts[:1], method="slerp")
    dist = []
    for t in (0.0, 0.25, 0.5, 1.0):
        merged = merger.merged_state_dict(None, parameters={"t": t})
        dist.append(sum((merged[k] - b[k]).double().norm().item() ** 2 for k in b) ** 0.5)
        if t == 0.0:
            assert all(torch.equal(merged[k], b[k]) for k in b)
        if t == 1.0:
            assert all(torch.allclose(merged[k], e0[k], rtol=1e-5, atol=1e-7) for k in b)
    full = dist[-1]
    assert dist[1] == pytest.approx(0.25 * full, rel=0.02) and dist[2] == pytest.approx(0.5 * full, rel=0.02)


def test_mmmo_merge_on_mergekit_yaml_writes_what_mergekit_writes(family: tuple[Path, list[Path]],
                                                                 tmp_path: Path) -> None:
    """Recipes as people write them: the base listed among the models, defaults left out, t as layer filters."""
    base, (e0, e1, e2) = family
    docs = {
        "slerp": {"merge_method": "slerp", "base_model": str(base),
                  "models": [{"model": str(base)}, {"model": str(e1)}],
                  "parameters": {"t": [{"filter": f, "value": 0.6}
                                       for f in ("model.layers.2.", "model.layers.3.", "model.norm", "lm_head")]
                                 + [{"value": 0.1}]}},  # two layer groups, embeddings with the first
        "nuslerp": {"merge_method": "nuslerp", "base_model": str(base),
                    "models": [{"model": str(e0), "parameters": {"weight": 1.0}},
                               {"model": str(e2), "parameters": {"weight": 0.5}}]},
        "multislerp": {"merge_method": "multislerp",
                       "models": [{"model": str(e), "parameters": {"weight": w}} for e, w in zip((e0, e1, e2), W3)]},
        "model_stock": {"merge_method": "model_stock", "base_model": str(base),
                        "models": [{"model": str(e)} for e in (base, e0, e1, e2)]},
        "karcher": {"merge_method": "karcher", "base_model": str(base),
                    "models": [{"model": str(e0)}, {"model": str(base)}, {"model": str(e2)}]},  # base in the middle
    }
    for method, doc in docs.items():
        doc["dtype"] = "float32"
        (tmp_path / f"{method}.yml").write_text(yaml.safe_dump(doc))
        ours_dir = run_recipe(tmp_path / f"{method}.yml", tmp_path / f"{method}-mmmo")
        assert_identical(read_weights(ours_dir), run_mergekit(doc, tmp_path / f"{method}-mk"))
        # the folder's own recipe reads back as the same merge, and mergekit writes the same model from it too
        again = load_mergekit_recipe(ours_dir / "mergekit_config.yml")
        first = load_mergekit_recipe(tmp_path / f"{method}.yml")
        assert (again.method, again.parameters, again.with_base) == (first.method, first.parameters, first.with_base)
        assert [m.path for m in again.models] == [m.path for m in first.models]
        assert again.weights().tolist() == first.weights().tolist()
        exported = yaml.safe_load((ours_dir / "mergekit_config.yml").read_text())
        assert_identical(read_weights(ours_dir), run_mergekit(exported, tmp_path / f"{method}-mk-again"))


def test_exported_yaml_round_trips(family: tuple[Path, list[Path]], tmp_path: Path) -> None:
    for method, n, weights, parameters, with_base in CASES:
        recipe = case_recipe(family, method, n, weights, parameters, with_base)
        path = tmp_path / f"{method}.yml"
        path.write_text(to_mergekit_yaml(recipe))
        back = load_mergekit_recipe(path)
        assert back.method == method and back.with_base == with_base
        expected = {k: (v if isinstance(v, list) else float(v)) for k, v in parameters.items()}
        if method == "slerp":
            assert back.parameters == expected
        else:  # flags and counts come back as numbers
            assert {k: float(v) for k, v in back.parameters.items()} == expected
        if method_info(method).uses_weight:
            assert back.weights().tolist() == recipe.weights().tolist()
        assert back.layer_groups == recipe.layer_groups


def test_chunked_passes_equal_whole_tensors() -> None:
    """The search path (angles kept, the mix over small chunks) writes exactly what the one-shot maths writes."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(37, 11, generator=gen)
    deltas = 0.1 * torch.randn(2, 37, 11, generator=gen)
    out = torch.empty_like(base)
    slerp_merge = GeometricMerge(method_info("slerp"), True, chunk=7)
    for t in (0.1, 0.65, 0.65):  # the second 0.65 reuses the kept angle
        stat = slerp_merge.merge_into(out, "w", base, deltas[:1], [1.0], {"t": t})
        expected = slerp(t, base, base + deltas[0])
        assert torch.equal(out, expected)
        assert stat.item() == pytest.approx((expected.double() - base.double()).abs().sum().item(), rel=1e-6)
    by_name = merge_tensor("slerp", base, deltas[:1], [1.0], parameters={"t": 0.4})
    assert torch.equal(by_name, slerp(0.4, base, base + deltas[0]))
    params = {"nuslerp_flatten": 1.0, "nuslerp_row_wise": 0.0}
    for with_base in (True, False):
        nu = GeometricMerge(method_info("nuslerp"), with_base, chunk=5)
        for w in ([0.7, 0.4], [0.1, 0.9]):
            nu.merge_into(out, "w", base, deltas, w, params)
            t = w[1] / (w[0] + w[1])
            expected = (base + nuslerp(t, deltas[0], deltas[1]) if with_base
                        else nuslerp(t, base + deltas[0], base + deltas[1]))
            assert torch.equal(out, expected)


def test_apply_writes_the_live_model_and_parameters_override(family: tuple[Path, list[Path]]) -> None:
    base, experts = family
    merger = Merger(base, experts[:2], method="nuslerp", parameters={"nuslerp_flatten": 0.0})
    stat = merger.apply([0.3, 0.6])
    live = merger.live_state_dict()
    assert all(torch.equal(live[k], v) for k, v in merger.merged_state_dict([0.3, 0.6]).items())
    b = read_weights(base)
    assert stat == pytest.approx(sum((live[k] - b[k]).double().abs().sum().item() for k in b) / merger.numel)
    flat = merger.merged_state_dict([0.3, 0.6], parameters={"nuslerp_flatten": 1.0})
    assert any(not torch.equal(flat[k], live[k]) for k in live if live[k].dim() == 2)


def test_search_data_in_the_registry() -> None:
    searched = {name for name, m in METHODS.items() if m.geometric and m.searchable}
    assert searched == {"slerp", "nuslerp", "multislerp"}  # model_stock and karcher: scored once, not searched
    t = method_info("slerp").parameter("t")
    assert (t.low, t.high, t.searched, t.required) == (0.0, 1.0, True, True)
    assert not method_info("slerp").uses_weight and method_info("nuslerp").uses_weight
    assert [p.name for p in method_info("karcher").parameters if p.searched] == []


def write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "r.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_what_mmmo_cannot_merge_is_one_line(family: tuple[Path, list[Path]], tmp_path: Path) -> None:
    base, (e0, e1, e2) = family
    slerp_doc = {"merge_method": "slerp", "base_model": str(base), "models": [{"model": str(e0)}]}
    bad = [
        ({**slerp_doc}, "parameters.t: required by slerp"),
        ({**slerp_doc, "parameters": {"t": [0, 0.5, 1]}}, "gradient lists are not supported"),
        ({**slerp_doc, "parameters": {"t": 0.5, "normalize": True}}, "parameters.normalize: not supported"),
        ({**slerp_doc, "parameters": {"t": 0.5}, "models": [{"model": str(e0)}, {"model": str(e1)}]},
         "slerp merges exactly 1 models besides the base, got 2"),
        ({**slerp_doc, "parameters": {"t": 0.5}, "models": [{"model": str(e0), "parameters": {"weight": 1}}]},
         "models[0].parameters.weight: slerp takes no per-model weight"),
        ({"merge_method": "model_stock", "base_model": str(base), "models": [{"model": str(e0)}]},
         "model_stock merges at least 2 models besides the base, got 1"),
        ({"merge_method": "nuslerp", "models": [{"model": str(e), "parameters": {"weight": 1}} for e in (e0, e1, e2)]},
         "nuslerp merges exactly 2 models besides the base, got 3"),
        ({"merge_method": "nuslerp", "parameters": {"nuslerp_flatten": 2},
          "models": [{"model": str(e), "parameters": {"weight": 1}} for e in (e0, e1)]},
         "parameters.nuslerp_flatten: expected true or false"),
    ]
    for doc, message in bad:
        with pytest.raises(MmmoError, match=message.replace("[", r"\[").replace(".", r"\.")) as err:
            load_mergekit_recipe(write(tmp_path, doc))
        assert "\n" not in str(err.value)
    with pytest.raises(MmmoError, match="slerp merges exactly 1"):
        Merger(base, [e0, e1], method="slerp")
    with pytest.raises(MmmoError, match="slerp has no parameter 'lambda'"):
        Merger(base, [e0], method="slerp", parameters={"lambda": 1.0})


def test_multislerp_refuses_cancelling_directions_in_one_line() -> None:
    merge = GeometricMerge(method_info("multislerp"), True)
    d = torch.tensor([[1.0, 2.0], [-1.0, -2.0], [0.0, 0.0]])
    with pytest.raises(MmmoError, match="weighted mean direction of tensor w is zero"):
        merge.merge_into(torch.empty(2), "w", torch.zeros(2), d, [1.0, 1.0, 1.0],
                         {"normalize_weights": 1.0, "eps": 1e-8})
