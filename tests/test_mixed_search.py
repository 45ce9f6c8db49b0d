"""The merge method as a searched choice: `merge.method` a list, its space, GP, merger, journal, report and export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from search_problems import search_options
from tiny_models import make_family
from typer.testing import CliRunner

from mmmo.merge.merger import Merger
from mmmo.optimizer.history import History
from mmmo.optimizer.space import STANDARD_DENSITY, STANDARD_WEIGHT, SearchSpace, standard_recipes
from mmmo.run.records import Trial
from mmmo.runtime.errors import SpecError
from mmmo.spec.schema import MergeSpec, spec_from_dict

MIXED = ("ties", "dare_ties", "task_arithmetic")


def _spec(method, **optimizer):
    data = {
        "name": "t", "base_model": "b", "models": ["a", "c"], "merge": {"method": method},
        "objectives": [{"name": "x", "task": "x", "metric": "acc"}],
        "optimizer": {"initial": 4, **optimizer},
    }
    return spec_from_dict(data, Path("."), check_paths=False)


# ------------------------------------------------------------------------------------------------------ config


def test_a_list_of_methods_is_a_mixed_spec_and_a_list_of_one_is_that_method() -> None:
    assert _spec(list(MIXED)).merge.methods == MIXED and _spec(list(MIXED)).merge.is_mixed
    one = _spec(["ties"])
    assert one.merge.method == "ties" and one.merge.methods == ("ties",) and not one.merge.is_mixed
    assert one == _spec("ties")
    # a density applies as soon as one listed method has one
    assert _spec(["task_arithmetic", "ties"]).density_bounds == (0.1, 1.0)
    assert _spec(["task_arithmetic", "linear"]).density_bounds is None


@pytest.mark.parametrize(
    ("method", "optimizer", "expected"),
    [
        ([], {}, "merge.method: an empty list names no method"),
        (["ties", "nope"], {}, "merge.method: got 'nope': input should be 'linear'"),
        (["ties", "ties"], {}, "merge.method: method(s) listed twice: ties"),
        (list(MIXED), {"initial": 2}, "optimizer.initial (2) is smaller than the 3 methods of merge.method"),
    ],
)
def test_bad_method_lists_fail_in_one_line(method, optimizer, expected) -> None:
    with pytest.raises(SpecError) as info:
        _spec(method, **optimizer)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_merge_spec_keeps_the_single_method_form() -> None:
    assert MergeSpec(method=["dare_ties"]).model_dump()["method"] == "dare_ties"
    assert MergeSpec(method=["ties", "dare_ties"]).model_dump()["method"] == ["ties", "dare_ties"]


# ------------------------------------------------------------------------------------------------------- space


def test_single_method_space_is_named_as_before() -> None:
    space = SearchSpace(("a", "b"), density_bounds=(0.1, 1.0), methods=("dare_ties",))
    assert space.names == SearchSpace(("a", "b"), density_bounds=(0.1, 1.0)).names
    assert space.names == ["a.weight", "b.weight", "a.density", "b.density"] and not space.is_mixed
    x = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    assert torch.equal(space.project(x), x)
    assert space.method_of(x) == "dare_ties"


def test_mixed_space_encodes_the_method_and_fixes_inactive_dimensions() -> None:
    space = SearchSpace(("a", "b"), weight_bounds=(0.0, 1.0), density_bounds=(0.2, 1.0), methods=MIXED)
    assert space.names == ["a.weight", "b.weight", "a.density", "b.density", "method"]
    assert space.method_dim == 4 and space.searched_methods == MIXED
    # bin centres of 3 methods
    assert [space.method_value(m) for m in MIXED] == pytest.approx([1 / 6, 0.5, 5 / 6])
    # task_arithmetic has no density: its densities are inactive, held at the upper bound (keep everything)
    assert space.fixed_features("task_arithmetic") == {2: 1.0, 3: 1.0, 4: pytest.approx(5 / 6)}
    assert space.fixed_features("ties") == {4: pytest.approx(1 / 6)}

    raw = torch.tensor([[0.3, 0.6, 0.25, 0.75, 0.9], [0.3, 0.6, 0.25, 0.75, 0.1]], dtype=torch.float64)
    X = space.project(raw)
    assert X[0].tolist() == pytest.approx([0.3, 0.6, 1.0, 1.0, 5 / 6])  # task_arithmetic: densities inactive
    assert X[1].tolist() == pytest.approx([0.3, 0.6, 0.25, 0.75, 1 / 6])  # ties keeps its densities
    assert torch.equal(space.project(X), X)  # idempotent
    assert [space.method_of(x) for x in X] == ["task_arithmetic", "ties"]

    # real units round trip; the inactive densities leave the merge and the named parameters
    w, d = space.from_unit(X[0])
    assert w.flatten().tolist() == pytest.approx([0.3, 0.6]) and d is None
    w, d = space.from_unit(X[1])
    assert d.flatten().tolist() == pytest.approx([0.2 + 0.8 * 0.25, 0.2 + 0.8 * 0.75])
    assert space.named(X[0]) == pytest.approx({"a.weight": 0.3, "b.weight": 0.6})
    named = space.named(X[1])
    assert named == pytest.approx({"a.weight": 0.3, "b.weight": 0.6, "a.density": 0.4, "b.density": 0.8})
    assert torch.allclose(space.to_unit({**named, "method": 1 / 6}), X[1])


def test_mixed_standard_recipes_open_one_point_per_method() -> None:
    space = SearchSpace(("a", "b"), density_bounds=(0.1, 1.0), methods=MIXED)
    R = standard_recipes(space)
    assert R.shape == (3, space.dim)
    assert [space.method_of(r) for r in R] == list(MIXED)
    for r, m in zip(R, MIXED):
        w, d = space.from_unit(r)
        assert w.flatten().tolist() == pytest.approx([STANDARD_WEIGHT] * 2)
        assert (d is None) == (m == "task_arithmetic")
        if d is not None:
            assert d.flatten().tolist() == pytest.approx([STANDARD_DENSITY] * 2)
    assert torch.equal(space.project(R), R)


def test_method_parameters_of_the_registry_get_their_own_dimension() -> None:
    from mmmo.merge.methods.registry import METHODS

    with_parameter = [m for m, i in METHODS.items() if i.searchable and any(p.searched for p in i.parameters)]
    if not with_parameter:
        pytest.skip("no method with a searched method-level parameter in the registry")
    m = with_parameter[0]
    p = next(p for p in METHODS[m].parameters if p.searched)
    space = SearchSpace(("a", "b"), density_bounds=(0.1, 1.0), methods=("ties", m))
    assert f"{m}.{p.name}" in space.names
    i = space.names.index(f"{m}.{p.name}")
    # inactive for ties: held at its default
    raw = torch.full((space.dim,), 0.1, dtype=torch.float64)
    raw[-1] = 0.0  # the method coordinate's first share: ties
    ties = space.project(raw)
    assert float(ties[i]) == pytest.approx((p.default - p.low) / (p.high - p.low))
    assert space.method_parameters(ties) == {}
    other = space.project(torch.full((space.dim,), 0.9, dtype=torch.float64))
    assert space.method_of(other) == m
    assert space.method_parameters(other) == pytest.approx({p.name: p.low + 0.9 * (p.high - p.low)})


# ------------------------------------------------------------------------------------------ GP and proposals


def test_mixed_batches_are_projected_and_modelled_with_a_categorical_method() -> None:
    from botorch.models import SingleTaskGP
    from botorch.models.kernels.categorical import CategoricalKernel

    from mmmo.optimizer.gp import fit_models
    from mmmo.optimizer.strategies import propose_batch
    from mmmo.spec.schema import OptimizerSpec

    space = SearchSpace(("a", "b"), density_bounds=(0.1, 1.0), methods=MIXED)
    opt = OptimizerSpec(initial=6, batches=1, batch_size=3, candidates=3, seed=3)
    X0 = torch.stack([torch.tensor(p.x, dtype=torch.float64) for p in propose_batch(
        search_options(opt, space.dim, 2, 2, initial_points=standard_recipes(space), space=space),
        History(X_done=torch.zeros(0, space.dim), Y_done=torch.zeros(0, 2), X_seen=torch.zeros(0, space.dim)),
        batch_index=0,
    )]).to(torch.float64)
    assert torch.equal(space.project(X0), X0)
    assert [space.method_of(x) for x in X0[:3]] == list(MIXED)
    # a smooth two-objective problem where ties is best
    bonus = {"ties": 0.5, "dare_ties": 0.2, "task_arithmetic": 0.0}
    Y0 = torch.stack([torch.tensor([bonus[space.method_of(x)] + x[0], bonus[space.method_of(x)] - x[0]]) for x in X0])
    Y0 = Y0.to(torch.float64)
    model = fit_models(X0, Y0, cat_dims=[space.method_dim])
    # the method coordinate is categorical: equal methods correlate fully, different ones by a fitted factor
    assert all(any(isinstance(k, CategoricalKernel) for k in m.covar_module.modules()) for m in model.models)
    assert [type(m) for m in fit_models(X0, Y0).models] == [SingleTaskGP] * 2  # without: the plain GP
    got = propose_batch(
        search_options(opt, space.dim, 2, 2, space=space), History(X_done=X0, Y_done=Y0, X_seen=X0), batch_index=1,
    )
    X1 = torch.tensor([p.x for p in got], dtype=torch.float64)
    assert X1.shape == (3, space.dim) and [p.step for p in got] == ["take_home", "acquisition", "acquisition"]
    assert torch.allclose(space.project(X1), X1)  # every proposal is a configuration of one method
    assert all(space.method_of(x) in MIXED for x in X1)


# ------------------------------------------------------------------------------------------------------ merger


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    return make_family(tmp_path_factory.mktemp("mixed-family"), 3)


def test_one_merger_merges_each_method_as_its_own_merger_does(family) -> None:
    base, experts = family
    w = torch.tensor([0.7, 0.4, 0.9], dtype=torch.float64)
    d = torch.tensor([0.5, 0.3, 0.8], dtype=torch.float64)
    mixed = Merger(base, experts, method="ties", methods=MIXED, seed=3)
    tables = next(iter(mixed.task_vectors.tables.values()))
    assert tables.sorted_mag is not None and tables.uniforms is not None  # TIES and DARE tables side by side
    for m in MIXED:
        alone = Merger(base, experts, method=m, seed=3).merged_state_dict(w, d)
        got = mixed.merged_state_dict(w, d, method=m)
        assert all(torch.equal(got[k], alone[k]) for k in alone), m
    # without tables (host-side task vectors) too
    small = Merger(base, experts, method="dare_ties", methods=MIXED, seed=3, max_resident_bytes=1)
    assert not small.resident
    ref = Merger(base, experts, method="ties", seed=3, max_resident_bytes=1).merged_state_dict(w, d)
    got = small.merged_state_dict(w, d, method="ties")
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    with pytest.raises(Exception, match="not loaded for method 'linear'"):
        mixed.apply(w, d, method="linear")


# ------------------------------------------------------------------------------------------ end to end on the demo


@pytest.fixture(scope="module")
def mixed_run(demo_paths, tmp_path_factory):
    from demo_specs import write_demo_spec

    import mmmo

    folder = tmp_path_factory.mktemp("mixed")
    spec_path = write_demo_spec(
        demo_paths, folder, merge={"method": list(MIXED)}, output={"export": "pareto", "export_limit": 8},
        optimizer={"initial": 5, "batches": 1, "candidates": 3, "batch_size": 2, "seed": 0},
    )
    return spec_path, mmmo.search(spec_path, show_progress=False)


def test_mixed_search_journals_each_trials_method(mixed_run) -> None:
    from mmmo.run.store import fold_events, read_events

    _, result = mixed_run
    assert len(result.trials) == 7 and all(t.status == "done" for t in result.trials)
    assert [t.step for t in result.trials[:3]] == ["standard"] * 3
    assert [t.method for t in result.trials[:3]] == list(MIXED)
    events = read_events(result.run_dir / "trials.jsonl")
    proposed = [e["trial"] for e in events if e["event"] == "proposed"]
    assert all(p["method"] in MIXED for p in proposed)
    state = fold_events(events)
    space = SearchSpace.from_spec(result.spec)
    for t in state.trials:
        assert t.method == space.method_of(t.x)
        # parameters are the ones its method uses: no density for task_arithmetic
        has_density = t.method != "task_arithmetic"
        assert any(k.endswith(".density") for k in t.params) == has_density


def test_mixed_report_show_and_export_name_each_trials_method(mixed_run) -> None:
    from mmmo.cli import app

    _, result = mixed_run
    report = (result.run_dir / "report.md").read_text()
    assert "method: ties, dare_ties, task_arithmetic (searched)" in report
    assert "- take-home merge per method (mean task score): ties " in report
    chosen = result.summary.best()
    assert chosen is not None and chosen.method in MIXED
    assert f"Trial {chosen.id} ({chosen.method}) scores " in report  # the lead names the method merged
    front = report.split("## Pareto front")[1].split("## Every trial")[0]
    rows = [r.split("|") for r in front.splitlines() if r.startswith("| ")][1:]
    assert {int(r[1]): r[3].strip() for r in rows} == {t.id: t.method for t in result.pareto}
    data = json.loads((result.run_dir / "pareto.json").read_text())
    assert {p["trial"]: p["method"] for p in data["pareto"]} == {t.id: t.method for t in result.pareto}

    out = CliRunner().invoke(app, ["show", str(result.run_dir)], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    assert "method" in out.stdout
    for t in result.pareto:
        assert t.method in out.stdout

    assert len(result.exported) == len(result.pareto)
    by_id = {t.id: t for t in result.trials}
    for folder in result.exported:
        t = by_id[int(folder.name.removeprefix("trial-"))]
        recipe = yaml.safe_load((folder / "mergekit_config.yml").read_text())
        assert recipe["merge_method"] == t.method
        has_density = any("density" in m.get("parameters", {}) for m in recipe["models"])
        assert has_density == (t.method != "task_arithmetic")


def test_exported_mixed_trial_is_the_merge_it_was_scored_as(mixed_run) -> None:
    """The export merges with the trial's method: the same tensors as a merger built for that method alone."""
    from safetensors.torch import load_file

    from mmmo.results.export import trial_arrays

    _, result = mixed_run
    folder = result.exported[0]
    t = next(t for t in result.trials if t.id == int(folder.name.removeprefix("trial-")))
    spec = result.spec
    w, d = trial_arrays(spec, t)
    alone = Merger(spec.base_model, [m.path for m in spec.models], method=t.method, seed=spec.merge.seed)
    expected = alone.merged_state_dict(w, d)
    got = {}
    for f in folder.glob("*.safetensors"):
        got.update(load_file(f))
    assert set(expected) <= set(got)
    assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_single_method_journal_has_no_method_field() -> None:
    t = Trial(id=0, batch=0, x=[0.5], step="sobol")
    assert "method" not in t.to_json()
    assert Trial.from_json(t.to_json()) == t
    assert t.method_or("ties") == "ties"
    mixed = Trial(id=1, batch=0, x=[0.5], step="sobol", method="dare_ties")
    assert mixed.to_json()["method"] == "dare_ties" and Trial.from_json(mixed.to_json()) == mixed
