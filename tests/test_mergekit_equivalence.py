"""The same recipe through mergekit 0.1.5 (`run_merge`, CPU, to disk) and through mmmo gives the same tensors.

DARE draws random masks: mergekit from torch's global generator, mmmo from generators seeded per (seed, model,
tensor). One test substitutes mmmo's masks into mergekit (everything else is mergekit's own code) and expects
equal tensors; another lets mergekit draw its own masks and compares keep rates and norms.
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

from mmmo.merge.merger import Merger
from mmmo.merge.methods.sparsify import bernoulli_mask, dare_generator
from mmmo.merge.recipes.recipe import MergeRecipe, to_mergekit_yaml
from mmmo.merge.recipes.recipe_run import run_recipe

W = torch.tensor([[0.6, 0.3], [0.3, 0.9], [0.5, 0.2]], dtype=torch.float64)
D = torch.tensor([[0.4, 0.7], [0.6, 0.2], [0.3, 0.5]], dtype=torch.float64)


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    # larger than the default tiny model so keep-rate statistics are meaningful
    return make_family(tmp_path_factory.mktemp("mk"), 3, seed=2, hidden_size=32, intermediate_size=64)


def run_mergekit(recipe: MergeRecipe, out: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    config = MergeConfiguration.model_validate(yaml.safe_load(to_mergekit_yaml(recipe)))
    run_merge(config, str(out), MergeOptions(quiet=True, random_seed=seed, write_model_card=False))
    return read_weights(out)


def assert_same(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert set(ours) == set(theirs)
    for name, t in theirs.items():
        err = ((ours[name].double() - t.double()).norm() / t.double().norm().clamp_min(1e-30)).item()
        assert err <= 1e-6, f"{name}: relative difference {err:.2e}"


CASES = [
    ("linear", 1, {}),
    ("linear", 1, {"normalize": False}),
    ("task_arithmetic", 1, {"lambda_": 0.7}),
    ("task_arithmetic", 1, {"normalize": True}),
    ("ties", 1, {}),
    ("ties", 1, {"normalize": False, "lambda_": 1.3}),
    ("ties", 2, {}),  # per-layer-group parameters travel as mergekit filters
]


@pytest.mark.parametrize(("method", "groups", "extra"), CASES)
def test_same_tensors_as_mergekit(family: tuple[Path, list[Path]], tmp_path: Path, method: str, groups: int,
                                  extra: dict[str, Any]) -> None:
    base, experts = family
    w, d = W[:, :groups], D[:, :groups]
    recipe = MergeRecipe.from_arrays(base, experts, method, w, d, dtype="float32", **extra)
    theirs = run_mergekit(recipe, tmp_path / "mk")
    merger = Merger(base, experts, method=method, layer_groups=groups, normalize=recipe.normalize,
                    lambda_=recipe.lambda_)
    assert_same(merger.merged_state_dict(w, d), theirs)


def test_cli_recipe_matches_mergekit_on_the_same_file(family: tuple[Path, list[Path]], tmp_path: Path) -> None:
    base, experts = family
    recipe = MergeRecipe.from_arrays(base, experts, "ties", W, D, dtype="float32")
    (tmp_path / "recipe.yml").write_text(to_mergekit_yaml(recipe))
    ours = read_weights(run_recipe(tmp_path / "recipe.yml", tmp_path / "mmmo"))
    assert_same(ours, run_mergekit(recipe, tmp_path / "mk"))


@pytest.fixture
def mmmo_masks_in_mergekit(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Make mergekit's DARE draw mmmo's mask for (seed, model index, tensor name); the rest stays mergekit's."""
    from mergekit import sparsify as mk_sparsify
    from mergekit.merge_methods import generalized_task_arithmetic as gta

    seed = 9
    state: dict[str, Any] = {}
    original = gta.GeneralizedTaskArithmeticMerge.merge_group

    def merge_group(self: Any, group: Any, /, **parameters: Any) -> torch.Tensor:
        state["name"], state["i"] = group.metadata.name, 0  # sparsify is called once per model, in order
        return original(self, group, **parameters)

    def sparsify(tensor: torch.Tensor, density: float, method: Any, rescale_norm: Any = None, **_: Any):
        assert method == mk_sparsify.SparsificationMethod.random
        i = state["i"]
        state["i"] += 1
        if density >= 1:
            return tensor
        keep = bernoulli_mask(tensor.shape, density, dare_generator(seed, i, state["name"]))
        return mk_sparsify.rescaled_masked_tensor(tensor, keep.to(tensor.dtype), rescale_norm)

    monkeypatch.setattr(gta.GeneralizedTaskArithmeticMerge, "merge_group", merge_group)
    monkeypatch.setattr(gta, "sparsify", sparsify)
    yield seed


@pytest.mark.parametrize(("method", "extra"), [
    ("dare_ties", {}), ("dare_linear", {}), ("dare_ties", {"rescale": False, "normalize": True}),
])
def test_dare_with_aligned_masks_matches_mergekit(family: tuple[Path, list[Path]], tmp_path: Path,
                                                  mmmo_masks_in_mergekit: int, method: str,
                                                  extra: dict[str, Any]) -> None:
    base, experts = family
    seed = mmmo_masks_in_mergekit
    recipe = MergeRecipe.from_arrays(base, experts, method, W[:, :1], D[:, :1], dtype="float32", seed=seed, **extra)
    theirs = run_mergekit(recipe, tmp_path / "mk")
    merger = Merger(base, experts, method=method, seed=seed, normalize=recipe.normalize, rescale=recipe.rescale)
    assert_same(merger.merged_state_dict(W[:, :1], D[:, :1]), theirs)


def test_dare_ties_statistics_match_mergekit_own_masks(family: tuple[Path, list[Path]], tmp_path: Path) -> None:
    base, experts = family
    d = torch.tensor([0.3, 0.5, 0.7], dtype=torch.float64)
    w = torch.tensor([0.6, 0.3, 0.5], dtype=torch.float64)
    recipe = MergeRecipe.from_arrays(base, experts, "dare_ties", w, d, dtype="float32")
    theirs = run_mergekit(recipe, tmp_path / "mk", seed=123)
    ours = Merger(base, experts, method="dare_ties", seed=0).merged_state_dict(w, d)
    b = read_weights(base)

    def stats(merged: dict[str, torch.Tensor]) -> tuple[float, float, float]:
        changed = sum((merged[n] != b[n]).sum().item() for n in b)
        l1 = sum((merged[n].double() - b[n].double()).abs().sum().item() for n in b)
        l2 = sum(((merged[n].double() - b[n].double()) ** 2).sum().item() for n in b) ** 0.5
        return changed / sum(t.numel() for t in b.values()), l1, l2

    (c1, a1, n1), (c2, a2, n2) = stats(ours), stats(theirs)
    # P(at least one model keeps an entry) = 1 - .7*.5*.3 = .895, less the entries whose kept signs disagree
    assert 0.6 < c1 < 0.9
    assert c1 == pytest.approx(c2, abs=0.01)
    assert a1 == pytest.approx(a2, rel=0.03)
    assert n1 == pytest.approx(n2, rel=0.03)
