"""Breadcrumbs, breadcrumbs_ties, DELLA, della_linear and SCE against mergekit 0.1.5 (`run_merge`, CPU, to disk), on
tiny models of two architectures (Llama; Qwen2 with q/k/v biases and tied embeddings).

Tolerances: Breadcrumbs and SCE are deterministic in mergekit, and mmmo writes the same tensors bit for bit (SCE's
`reference`; the Merger's fast SCE sums its squares in float64, so within 1e-6 relative). DELLA draws random masks
(torch's global generator in mergekit): with mmmo's draws substituted into mergekit's own DELLA (its ranks, its
probabilities, its rescale) the tensors agree within 1e-6 relative (the L1 rescale's norms are summed in another
order: a float32 ulp), bit for bit without rescale; with mergekit's own draws, keep rates and norms agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

pytest.importorskip("mergekit")

from tiny_models import make_family, read_weights

from mmmo.merge.kernels.fast_merge import merge_into
from mmmo.merge.kernels.tables import Precomputed, della_tables, sorted_magnitudes
from mmmo.merge.kernels.workspace import Workspace
from mmmo.merge.merger import Merger
from mmmo.merge.methods.plan import MergePlan
from mmmo.merge.methods.reference import reference_delta, sce_delta, sce_mask, sce_weights
from mmmo.merge.methods.sparsify import (
    dare_generator,
    della_epsilon,
    della_probabilities,
    della_rank_norm,
    outlier_band,
    outlier_mask,
)
from mmmo.merge.recipes.recipe import MergeRecipe, to_mergekit_yaml
from mmmo.merge.recipes.recipe_reader import load_mergekit_recipe
from mmmo.merge.recipes.recipe_run import run_recipe
from mmmo.runtime.errors import MmmoError

W = torch.tensor([[0.6, 0.3], [0.3, 0.9], [0.5, 0.2]], dtype=torch.float64)
D = torch.tensor([[0.4, 0.7], [0.6, 0.3], [0.35, 0.5]], dtype=torch.float64)
ARCHS = ["llama", "qwen2"]


@pytest.fixture(scope="module", params=ARCHS)
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp(f"gta_{request.param}")
    return make_family(root, 3, seed=4, hidden_size=32, intermediate_size=64, architecture=request.param)


def run_mergekit(recipe: MergeRecipe, out: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    config = MergeConfiguration.model_validate(yaml.safe_load(to_mergekit_yaml(recipe)))
    run_merge(config, str(out), MergeOptions(quiet=True, random_seed=seed, write_model_card=False))
    return read_weights(out)


def max_relative(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> float:
    """The largest per-tensor |ours - theirs| / |theirs| (L2) over all tensors (same names required)."""
    assert set(ours) == set(theirs)
    return max(
        ((ours[n].double() - t.double()).norm() / t.double().norm().clamp_min(1e-30)).item() for n, t in theirs.items()
    )


def identical(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> bool:
    return set(ours) == set(theirs) and all(torch.equal(ours[n], t) for n, t in theirs.items())


def merger_for(recipe: MergeRecipe, **extra: Any) -> Merger:
    return Merger(recipe.base_path, [m.path for m in recipe.models], method=recipe.method,
                  layer_groups=recipe.layer_groups, normalize=recipe.normalize, rescale=recipe.rescale,
                  lambda_=recipe.lambda_, parameters=recipe.parameters, seed=recipe.seed, **extra)


# ---- Breadcrumbs and SCE: deterministic, bit for bit


BREADCRUMBS_CASES = [
    ("breadcrumbs", 1, {}),
    ("breadcrumbs", 2, {"parameters": {"gamma": 0.05}}),  # per-layer-group densities travel as filters
    ("breadcrumbs_ties", 1, {"parameters": {"gamma": 0.03}}),
    ("breadcrumbs_ties", 1, {"normalize": True, "lambda_": 1.3}),
]


@pytest.mark.parametrize(("method", "groups", "extra"), BREADCRUMBS_CASES)
def test_breadcrumbs_is_mergekit_bit_for_bit(family: tuple[Path, list[Path]], tmp_path: Path, method: str,
                                             groups: int, extra: dict[str, Any]) -> None:
    base, experts = family
    w, d = W[:, :groups], D[:, :groups]
    recipe = MergeRecipe.from_arrays(base, experts, method, w, d, dtype="float32", **extra)
    theirs = run_mergekit(recipe, tmp_path / "mk")
    for precompute in (False, True):  # a selection, and the search-wide sorted magnitudes
        ours = merger_for(recipe, precompute=precompute).merged_state_dict(w, d)
        assert identical(ours, theirs), (precompute, max_relative(ours, theirs))


def test_breadcrumbs_with_rescale_matches_mergekit(family: tuple[Path, list[Path]], tmp_path: Path) -> None:
    base, experts = family
    recipe = MergeRecipe.from_arrays(base, experts, "breadcrumbs_ties", W[:, :1], D[:, :1], dtype="float32",
                                     rescale=True, parameters={"gamma": 0.04})
    theirs = run_mergekit(recipe, tmp_path / "mk")
    ours = merger_for(recipe).merged_state_dict(W[:, :1], D[:, :1])
    assert max_relative(ours, theirs) <= 1e-6  # the rescale factor is folded into the weight: an ulp


@pytest.mark.parametrize("select_topk", [1.0, 0.4])
def test_sce_is_mergekit(family: tuple[Path, list[Path]], tmp_path: Path, select_topk: float) -> None:
    base, experts = family
    recipe = MergeRecipe.from_arrays(base, experts, "sce", W[:, :1], None, dtype="float32",
                                     parameters={"select_topk": select_topk})
    assert "weight" not in to_mergekit_yaml(recipe)  # SCE takes no per-model weight
    theirs = run_mergekit(recipe, tmp_path / "mk")
    # the reference: bit for bit
    b, xs = read_weights(base), [read_weights(e) for e in experts]
    ref = {n: t + sce_delta(torch.stack([x[n] - t for x in xs]), select_topk) for n, t in b.items()}
    assert identical(ref, theirs)
    # the Merger's two-pass SCE: the weights' mean squares summed in float64
    ours = merger_for(recipe).merged_state_dict(None)
    assert max_relative(ours, theirs) <= 1e-6


# ---- DELLA: mergekit's own code with mmmo's draws


@pytest.fixture
def mmmo_draws_in_mergekit(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Make mergekit's DELLA draw mmmo's uniforms for (seed, model index, tensor name): `torch.bernoulli(p)`
    becomes `u < p`; the ranks, probabilities and rescale stay mergekit's."""
    from mergekit import sparsify as mk_sparsify
    from mergekit.merge_methods import generalized_task_arithmetic as gta

    seed = 11
    state: dict[str, Any] = {}
    original_group, original_sparsify = gta.GeneralizedTaskArithmeticMerge.merge_group, gta.sparsify

    def merge_group(self: Any, group: Any, /, **parameters: Any) -> torch.Tensor:
        state["name"], state["i"] = group.metadata.name, 0  # sparsify runs once per model, in order
        return original_group(self, group, **parameters)

    def sparsify(*args: Any, **kwargs: Any) -> torch.Tensor:
        state["model"] = state["i"]
        state["i"] += 1
        return original_sparsify(*args, **kwargs)

    def bernoulli(p: torch.Tensor) -> torch.Tensor:
        u = torch.empty(p.numel(), dtype=torch.float32).uniform_(
            generator=dare_generator(seed, state["model"], state["name"]))
        return (u.view(p.shape) < p).to(p.dtype)

    monkeypatch.setattr(gta.GeneralizedTaskArithmeticMerge, "merge_group", merge_group)
    monkeypatch.setattr(gta, "sparsify", sparsify)
    monkeypatch.setattr(mk_sparsify.torch, "bernoulli", bernoulli)
    yield seed


@pytest.mark.parametrize(("method", "extra", "exact"), [
    ("della", {}, False),
    ("della_linear", {"parameters": {"epsilon": 0.1}}, False),
    ("della", {"rescale": False, "parameters": {"epsilon": 0.2}}, True),
    ("della_linear", {"rescale": False, "normalize": True}, True),
])
def test_della_with_aligned_draws_matches_mergekit(family: tuple[Path, list[Path]], tmp_path: Path,
                                                   mmmo_draws_in_mergekit: int, method: str, extra: dict[str, Any],
                                                   exact: bool) -> None:
    base, experts = family
    seed = mmmo_draws_in_mergekit
    recipe = MergeRecipe.from_arrays(base, experts, method, W[:, :1], D[:, :1], dtype="float32", seed=seed, **extra)
    theirs = run_mergekit(recipe, tmp_path / "mk")
    for precompute in (False, True):  # draws and ranks now, or from the search-wide tables
        ours = merger_for(recipe, precompute=precompute).merged_state_dict(W[:, :1], D[:, :1])
        if exact:
            assert identical(ours, theirs), max_relative(ours, theirs)
        else:
            assert max_relative(ours, theirs) <= 1e-6


def test_della_statistics_match_mergekit_own_draws(family: tuple[Path, list[Path]], tmp_path: Path) -> None:
    base, experts = family
    d = torch.tensor([0.3, 0.5, 0.7], dtype=torch.float64)
    w = torch.tensor([0.6, 0.3, 0.5], dtype=torch.float64)
    recipe = MergeRecipe.from_arrays(base, experts, "della_linear", w, d, dtype="float32", rescale=False)
    theirs = run_mergekit(recipe, tmp_path / "mk", seed=123)
    ours = merger_for(recipe).merged_state_dict(w, d)
    b = read_weights(base)

    def stats(merged: dict[str, torch.Tensor]) -> tuple[float, float]:
        changed = sum((merged[n] != b[n]).sum().item() for n in b) / sum(t.numel() for t in b.values())
        return changed, sum((merged[n].double() - b[n].double()).abs().sum().item() for n in b)

    (c1, a1), (c2, a2) = stats(ours), stats(theirs)
    assert c1 == pytest.approx(1 - 0.7 * 0.5 * 0.3, abs=0.02)  # some model keeps an entry
    assert c1 == pytest.approx(c2, abs=0.01)
    # the large magnitudes, kept more often, dominate |.|_1: on ~20k entries a draw moves it by a few percent
    assert a1 == pytest.approx(a2, rel=0.06)


# ---- recipes: `mmmo merge` on mergekit's YAML, and exported YAML read back


@pytest.mark.parametrize(("method", "params"), [
    ("breadcrumbs", {"gamma": 0.02}), ("breadcrumbs_ties", {}), ("sce", {"select_topk": 0.3}),
    ("della_linear", {"epsilon": 0.05}),
])
def test_mmmo_merge_on_mergekit_yaml_writes_what_mergekit_writes(
    family: tuple[Path, list[Path]], tmp_path: Path, method: str, params: dict[str, float]
) -> None:
    base, experts = family
    dens = None if method == "sce" else D[:, :1]
    extra: dict[str, Any] = {"rescale": False} if method == "della_linear" else {}
    recipe = MergeRecipe.from_arrays(base, experts, method, W[:, :1], dens, dtype="float32", parameters=params,
                                     **extra)
    (tmp_path / "recipe.yml").write_text(to_mergekit_yaml(recipe))
    back = load_mergekit_recipe(tmp_path / "recipe.yml")
    assert (back.method, back.parameters, back.rescale) == (method, params, recipe.rescale)
    ours = read_weights(run_recipe(tmp_path / "recipe.yml", tmp_path / "mmmo"))
    if method == "della_linear":  # random masks: ours are those the Merger draws with the recipe's seed
        want = merger_for(back).merged_state_dict(W[:, :1], D[:, :1])
        assert identical(ours, want)
        return
    theirs = run_mergekit(recipe, tmp_path / "mk")
    assert max_relative(ours, theirs) <= (1e-6 if method == "sce" else 0.0)


def test_per_model_gamma_and_epsilon(family: tuple[Path, list[Path]], tmp_path: Path) -> None:
    base, experts = family

    def write(method: str, key: str, values: list[float]) -> Path:
        doc = {
            "merge_method": method, "base_model": str(base), "dtype": "float32",
            "models": [{"model": str(e), "parameters": {"weight": 0.5, "density": 0.5, key: v}}
                       for e, v in zip(experts, values, strict=True)],
        }
        path = tmp_path / f"{method}.yml"
        path.write_text(yaml.safe_dump(doc))
        return path

    assert load_mergekit_recipe(write("della", "epsilon", [0.1] * 3)).parameters == {"epsilon": 0.1}
    assert load_mergekit_recipe(write("breadcrumbs", "gamma", [0.02] * 3)).parameters == {"gamma": 0.02}
    with pytest.raises(MmmoError, match=r"^models\[\*\]\.parameters\.gamma: the models' values differ"):
        load_mergekit_recipe(write("breadcrumbs", "gamma", [0.02, 0.03, 0.02]))
    with pytest.raises(MmmoError, match=r"parameters\.epsilon: not supported"):
        load_mergekit_recipe(write("ties", "epsilon", [0.1] * 3))
    doc = yaml.safe_load(write("sce", "density", [0.5] * 3).read_text())
    doc["parameters"] = {"normalize": True}
    (tmp_path / "sce2.yml").write_text(yaml.safe_dump(doc))
    with pytest.raises(MmmoError, match="not supported by mmmo for sce"):
        load_mergekit_recipe(tmp_path / "sce2.yml")


# ---- the maths by hand, and the fast path against the reference


def test_outlier_band_follows_mergekit_counts() -> None:
    # 100 entries, density .3, gamma .05: keep ascending ranks [65, 95) = the 35 largest less the 5 largest
    assert outlier_band(100, 0.3, 0.05) == (5, 35)
    # not enough small ones to drop: fewer outliers go (mergekit's n_bottom = max(0, ...))
    assert outlier_band(100, 0.9, 0.2) == (10, 100)
    assert outlier_band(100, 0.0, 0.05) == (5, 5)  # nothing kept
    x = torch.tensor([0.1, -5.0, 0.3, -0.2, 4.0, 0.05, 0.4, -0.35, 0.25, 0.15])
    # density .4, gamma .2: drop the 2 largest (|-5|, 4) and keep the next 4
    assert outlier_mask(x, 0.4, 0.2).nonzero().squeeze(1).tolist() == [2, 6, 7, 8]


def test_della_ranks_and_probabilities_by_hand() -> None:
    x = torch.tensor([[0.3, -0.1, 0.2, -0.4, 0.0], [1.0, 2.0, -3.0, 0.5, 0.25]])
    r = della_rank_norm(x)  # per row: rank by |x|, scaled to [0, 1]
    assert r.tolist() == [[0.75, 0.25, 0.5, 1.0, 0.0], [0.5, 0.75, 1.0, 0.25, 0.0]]
    p = della_probabilities(r, 0.5, 0.1)
    assert torch.allclose(p[1], torch.tensor([0.5, 0.55, 0.6, 0.45, 0.4]))
    # mmmo narrows an epsilon mergekit would refuse, so every density merges
    assert (della_epsilon(0.9, 0.15), della_epsilon(0.05, 0.15), della_epsilon(0.5, 0.15)) == (
        pytest.approx(0.1), 0.05, 0.15)


def test_sce_by_hand() -> None:
    tv = torch.tensor([[1.0, -2.0, 0.5, 0.0], [3.0, 2.0, -0.5, 0.0]])
    # variances across the 2 models: 1, 4, .25, 0 -> nonzero 3; select_topk .7 keeps int(2.1) = 2: entries 0, 1
    assert sce_mask(tv, 0.7).tolist() == [True, True, False, False]
    sel = tv * sce_mask(tv, 0.7)
    w = sce_weights(sel)  # mean squares 5/4 and 13/4 -> 5/18, 13/18
    assert torch.allclose(w, torch.tensor([5 / 18, 13 / 18]))
    # entry 0: both agree -> (5*1 + 13*3) / 18; entry 1: sum 0 elects +, only model 1 agrees -> 2
    assert torch.allclose(sce_delta(tv, 0.7), torch.tensor([44 / 18, 2.0, 0.0, 0.0]))


@pytest.mark.parametrize("method", ["breadcrumbs", "breadcrumbs_ties", "della", "della_linear", "sce"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_path_is_the_reference(method: str, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(300, 70, generator=gen).to(dtype)
    deltas = (torch.round(torch.randn(3, 300, 70, generator=gen) * 32) / 32).to(dtype)  # ties at thresholds
    w, d = [0.6, -0.25, 0.9], [0.3, 0.55, 0.8]
    params = {"gamma": 0.05} if "breadcrumbs" in method else {"select_topk": 0.4} if method == "sce" else {}
    values, positions = sorted_magnitudes(deltas)
    u, ranks = della_tables(deltas, [dare_generator(4, i, "t") for i in range(3)])
    tables = Precomputed(values, positions, uniforms=u, ranks=ranks)
    for rescale in (False, True):
        plan = MergePlan.of(method, rescale=rescale, parameters=params)
        want = reference_delta(plan, base, deltas, w, d, [dare_generator(4, i, "t") for i in range(3)])
        for chunk in (None, 999):  # whole tensor; ragged chunks
            for pre in (None, tables):
                got = torch.empty_like(base)
                merge_into(got, MergePlan.of(method, rescale=rescale, parameters=params, chunk=chunk), base, deltas,
                           w, d, generators=[dare_generator(4, i, "t") for i in range(3)], tables=pre,
                           workspace=Workspace(), add_base=False)
                if rescale and dtype == torch.float32 and method != "sce":
                    # the rescale factor is folded into the weight (one rounding, not two)
                    err = ((got.double() - want.double()).norm() / want.double().norm()).item()
                    assert err <= 1e-6, (rescale, chunk, pre is None, err)
                else:
                    assert torch.equal(got, want), (rescale, chunk, pre is None)
