"""Search space: dimension names and the unit-cube mapping, with hand-worked numbers."""

from __future__ import annotations

import pytest
import torch

from mmmo.optimizer.space import SearchSpace
from mmmo.runtime.errors import MmmoError
from mmmo.spec.schema import spec_from_dict


def test_names_and_dim_model_granularity_without_density() -> None:
    space = SearchSpace(("a", "b", "c"), weight_bounds=(0.0, 1.0))
    assert space.names == ["a.weight", "b.weight", "c.weight"]
    assert space.dim == 3
    assert space.from_unit(torch.tensor([0.1, 0.2, 0.3]))[1] is None


def test_layer_groups_with_density_round_trip() -> None:
    space = SearchSpace(("a", "b"), layer_groups=2, weight_bounds=(0.0, 0.5), density_bounds=(0.2, 1.0))
    assert space.names == [
        "a.weight.g0", "a.weight.g1", "b.weight.g0", "b.weight.g1",
        "a.density.g0", "a.density.g1", "b.density.g0", "b.density.g1",
    ]  # fmt: skip
    assert space.dim == 8
    x = torch.tensor([0.0, 0.5, 1.0, 0.2, 0.5, 0.0, 1.0, 0.25], dtype=torch.float64)
    w, d = space.from_unit(x)
    # weight = 0 + 0.5 u; density = 0.2 + 0.8 u
    torch.testing.assert_close(w, torch.tensor([[0.0, 0.25], [0.5, 0.1]], dtype=torch.float64))
    assert d is not None
    torch.testing.assert_close(d, torch.tensor([[0.6, 0.2], [1.0, 0.4]], dtype=torch.float64))
    named = space.named(x)
    assert named["b.weight.g1"] == pytest.approx(0.1)
    assert named["a.density.g0"] == pytest.approx(0.6)
    torch.testing.assert_close(space.to_unit(named), x)
    torch.testing.assert_close(space.to_unit(space.to_real(x)), x)


def test_to_unit_rejects_missing_names_and_wrong_sizes() -> None:
    space = SearchSpace(("a", "b"))
    with pytest.raises(MmmoError, match=r"b\.weight"):
        space.to_unit({"a.weight": 0.5})
    with pytest.raises(MmmoError, match="3 coordinates"):
        space.to_unit(torch.zeros(3))


def test_from_spec_takes_models_groups_and_density_default() -> None:
    spec = spec_from_dict(
        {
            "name": "t",
            "base_model": "org/base",
            "models": [{"path": "org/math", "name": "math"}, {"path": "org/code", "name": "code"}],
            "merge": {"method": "dare_ties", "granularity": "layers:3"},
            "search_space": {"weight": [0.1, 0.9]},
            "objectives": [{"name": "gsm", "task": "gsm8k", "metric": "exact_match"}],
        },
        root=__import__("pathlib").Path("."),
        check_paths=False,
    )
    space = SearchSpace.from_spec(spec)
    assert space.model_names == ("math", "code")
    assert space.layer_groups == 3
    assert space.weight_bounds == (0.1, 0.9)
    assert space.density_bounds == (0.1, 1.0)  # the default for density methods
    assert space.dim == 12
