"""The search spec: a pydantic schema loaded from YAML, with every path resolved against the file's folder."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mmmo.merge.methods.registry import DENSITY_METHODS, MethodName, method_info
from mmmo.run.documents import SubsetKind
from mmmo.runtime.errors import SpecError, one_line, validation_message
from mmmo.spec.take_home import TakeHomeSpec

DEFAULT_DENSITY_BOUNDS: tuple[float, float] = (0.1, 1.0)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class _Strict(BaseModel):
    # No field of a search takes NaN or an infinity (YAML's .nan, .inf): a NaN lambda or reference point would
    # only show up as NaN scores or hypervolumes, far from the line that caused them.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


class ModelRef(_Strict):
    """A source model: a local folder or a hub id, with the short name used in parameters and tables."""

    path: str
    name: str = ""

    @field_validator("name")
    @classmethod
    def _name_is_identifier(cls, v: str) -> str:
        if v and not re.fullmatch(r"[A-Za-z0-9_.-]+", v):
            raise ValueError(f"model name {v!r} may only hold letters, digits, '_', '.', '-'")
        return v


class MergeSpec(_Strict):
    # One method, or a list of them: the search then chooses each candidate's method too (a list of one is that
    # method).
    method: MethodName | list[MethodName] = "dare_ties"
    dtype: Literal["float32", "bfloat16", "float16"] | None = None  # None: bfloat16 on cuda, float32 on cpu
    granularity: str = "model"
    seed: int = 0
    normalize: bool | None = None  # None: the method's mergekit default
    lambda_: float = Field(1.0, alias="lambda")
    trust_remote_code: bool = False
    allow_pickle: bool = False
    fused: bool | None = None  # None: the compiled kernels of the task-vector methods on CPU from 50M parameters

    @field_validator("method", mode="before")
    @classmethod
    def _methods(cls, v: Any) -> Any:
        names = v if isinstance(v, list) else [v]
        if not names:
            raise ValueError("an empty list names no method: give one method or a list of them")
        known = list(get_args(MethodName))
        for name in names:
            if name not in known:
                choices = ", ".join(repr(k) for k in known[:-1]) + f" or {known[-1]!r}"
                raise ValueError(f"got {name!r}: input should be {choices}")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"method(s) listed twice: {', '.join(dupes)}")
        return names[0] if isinstance(v, list) and len(v) == 1 else v

    @property
    def methods(self) -> tuple[str, ...]:
        """Every method the search may merge with, in the spec's order (one for a single method)."""
        return (self.method,) if isinstance(self.method, str) else tuple(self.method)

    @property
    def is_mixed(self) -> bool:
        """True when the search chooses among two or more methods."""
        return len(self.methods) > 1

    @field_validator("granularity")
    @classmethod
    def _granularity(cls, v: str) -> str:
        if v == "model":
            return v
        m = re.fullmatch(r"layers:(\d+)", v)
        if not m or int(m.group(1)) < 1:
            raise ValueError(f"must be 'model' or 'layers:K' with K >= 1, got {v!r}")
        return v

    @property
    def layer_groups(self) -> int:
        """Number of parameter groups per model (1 for `model` granularity)."""
        return 1 if self.granularity == "model" else int(self.granularity.split(":")[1])

    @property
    def has_density(self) -> bool:
        """True when any of the methods has a density."""
        return any(method_info(m).uses_density for m in self.methods)


Bounds = tuple[float, float]


class SearchSpaceSpec(_Strict):
    """The bounds searched, in real units: every model's weight, and its density for methods that have one."""

    weight: Bounds = (0.0, 1.0)
    density: Bounds | None = None

    @field_validator("weight", "density")
    @classmethod
    def _bounds(cls, v: Bounds | None) -> Bounds | None:
        if v is None:
            return v
        lo, hi = v
        if not (0.0 <= lo <= 1.0 and 0.0 <= hi <= 1.0):
            raise ValueError(f"bounds {list(v)} must lie within [0, 1]")
        if lo >= hi:
            raise ValueError(f"bounds {list(v)} are reversed or empty (need low < high)")
        return v


class ObjectiveSpec(_Strict):
    name: str
    type: Literal["lm_eval", "sparsity"] = "lm_eval"
    task: str | None = None
    metric: str | None = None  # "exact_match" or "exact_match,strict-match"
    limit: int | float | None = None
    num_fewshot: int | None = None

    @model_validator(mode="after")
    def _task_fields(self) -> ObjectiveSpec:
        if self.type == "lm_eval":
            if not self.task:
                raise ValueError(f"objective {self.name!r} needs 'task' (an lm-eval task name)")
            if not self.metric:
                raise ValueError(f"objective {self.name!r} needs 'metric' (e.g. exact_match or acc)")
        elif self.task or self.metric:
            raise ValueError(f"objective {self.name!r} is a sparsity objective and takes no task or metric")
        return self


class WeakToStrongSpec(_Strict):
    """DE/rand/1 offspring of the strongest evaluated configurations (the paper's weak-to-strong step).

    `pool`: `offspring` children join the acquisition's choices and are picked only where their acquisition
    value is higher. `crossover`: the paper's step, crossing children into the acquisition's `candidates`.
    """

    # Off by default: in benchmarks/RESULTS.md (issue 14) pool offspring were picked for 19 of 1450 proposals,
    # 15 on BraninCurrin, where the median hypervolume fell 0.6 (1.1 noisy) points; elsewhere nothing changed.
    # The paper's crossover lost 3.2 points on the noisy demo and doubled the batch step time.
    enabled: bool = False
    mode: Literal["pool", "crossover"] = "pool"
    offspring: int = Field(10, ge=1)
    top_k: int = Field(5, ge=3)
    f: float = Field(0.5, gt=0.0, le=2.0)
    cr: float = Field(0.5, ge=0.0, le=1.0)


# What each GP assumes far from the data (optimizer.gp.resolve_prior_mean says which "auto" picks).
PriorMean = Literal["auto", "worst", "fitted", "forecast"]


class OptimizerSpec(_Strict):
    strategy: Literal["mm-mo", "qnehvi", "random", "nsga2"] = "mm-mo"
    initial: int = Field(10, ge=2)
    batches: int = Field(4, ge=0)
    candidates: int = Field(10, ge=1)
    batch_size: int = Field(5, ge=1)
    acquisition: Literal["qlognehvi", "qehvi"] = "qlognehvi"
    weak_to_strong: WeakToStrongSpec = WeakToStrongSpec()
    # Off by default: it only screens weak-to-strong offspring (pool mode) or crossed candidates (crossover mode).
    fisher_screening: bool = False
    # Each task score's lm-eval standard error is the GP's known observation noise (sparsity is exact);
    # False infers one noise level per objective from the data.
    known_noise: bool = True
    # Each GP's prior mean, what it predicts far from the data: "worst" pins it at the worst observation of its
    # objective, "fitted" is BoTorch's fitted constant, "auto" pins it with 3 or more objectives (where a fitted
    # mean makes unexplored corners look like progress: see optimizer.gp.resolve_prior_mean); "forecast" (measured,
    # not the default: docs/search-quality.md) keeps "fitted" with 2 and from 3 decides per batch: the one whose GPs
    # forecast the initial design better.
    prior_mean: PriorMean = "auto"
    # The initial design opens with the recipe a user would try by hand (equal weights, the usual density).
    standard_recipes: bool = True
    # Points of each BO batch (at most batch_size) spent on the take-home merge's score, the rest on the front (a
    # front search alone barely improves the one merge a user keeps); 0: the front only; "auto": a share of each
    # batch growing with the search's dimensions (LoopOptions.take_home_slots; measured in benchmarks/RESULTS.md).
    take_home_points: Annotated[int, Field(ge=0)] | Literal["auto"] = "auto"
    ref_point: list[float] | None = None
    seed: int = 0
    # How proposals meet the evaluators: "batch" proposes batch_size candidates together and waits for all of them;
    # "async" gives a freed evaluator the next candidate at once, proposed with the running ones pending
    # (optimizer.async_loop; batches stay as groups of batch_size proposals, for the journal and the report);
    # "auto" is async with several evaluators (evaluation.workers > 1), batch with one (SearchSpec.schedule); async
    # with one scores in a Ray actor, so the next proposal is made meanwhile (SearchSpec.evaluators_in_ray).
    schedule: Literal["auto", "batch", "async"] = "auto"

    @model_validator(mode="after")
    def _sizes(self) -> OptimizerSpec:
        w2s = self.weak_to_strong
        crossover = self.strategy == "mm-mo" and w2s.enabled and w2s.mode == "crossover"
        if crossover and self.batch_size > self.candidates:
            raise ValueError(f"batch_size ({self.batch_size}) cannot exceed candidates ({self.candidates}) with "
                             "weak_to_strong.mode crossover: screening keeps batch_size of the candidates")
        return self

    @property
    def budget(self) -> int:
        """Total evaluations of a complete run."""
        return self.initial + self.batches * self.batch_size


class EvaluationSpec(_Strict):
    device: str = "auto"
    batch_size: int | Literal["auto"] = "auto"
    workers: int = Field(1, ge=1)
    ray_address: str | None = None
    ray_tmp_dir: str | None = None
    evaluate_sources: bool = True
    # Which documents of each task every candidate is scored on (objective `limit` says how many): "random" is a
    # seeded sample, the same for the whole run and recorded in it; "first" takes the split's first documents,
    # as lm-eval's --limit does (biased wherever a dataset is ordered).
    subset: SubsetKind = "random"
    subset_seed: int = 0
    # Multi-fidelity scoring, as cumulative fractions of each task's documents (e.g. [0.25, 1.0]), off by default
    # (see optimizer.stages, and benchmarks/RESULTS.md for what it saved and cost):
    stages: list[float] | None = None
    # A candidate goes on while the chance that its full score improves the Pareto front is at least
    # stage_min_chance (with stage_min_gain > 0: adds that fraction of the hypervolume) or, with stage_take_home,
    # the chance that it becomes the take-home merge (take_home:, its requirements met) is.
    stage_min_chance: float = Field(0.1, gt=0.0, lt=1.0)
    stage_min_gain: float = Field(0.01, ge=0.0, lt=1.0)
    stage_take_home: bool = False
    # lm-eval tasks marked unsafe_code (mbpp, humaneval) execute the code the model writes on this machine:
    # refused unless the spec says so, as lm-eval's own --confirm_run_unsafe_code does.
    confirm_run_unsafe_code: bool = False

    @field_validator("stages")
    @classmethod
    def _stages(cls, v: list[float] | None) -> list[float] | None:
        if v is None:
            return v
        if len(v) < 2 or v[-1] != 1.0:
            raise ValueError(f"must be two or more fractions ending in 1.0 (e.g. [0.25, 1.0]), got {v}")
        if not all(0.0 < a < b for a, b in zip(v, v[1:])):
            raise ValueError(f"fractions must increase strictly within (0, 1], got {v}")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", v):
            raise ValueError(f"must be auto, cpu, cuda, cuda:N or mps, got {v!r}")
        return v


class OutputSpec(_Strict):
    dir: str = ""
    # One merge by default: a 7B merge is about 15 GB, and a front can hold dozens of trials.
    export: Literal["pareto", "best", "none"] = "best"
    # With export: pareto, at most this many merges: the largest hypervolume contributions first.
    export_limit: int = Field(3, ge=1)


class SearchSpec(_Strict):
    """A complete search: sources, merge method, search space, objectives, optimizer and outputs."""

    name: str
    base_model: str
    models: list[ModelRef]
    merge: MergeSpec = MergeSpec()
    search_space: SearchSpaceSpec = SearchSpaceSpec()
    objectives: list[ObjectiveSpec]
    tasks_dir: str | None = None
    optimizer: OptimizerSpec = OptimizerSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    output: OutputSpec = OutputSpec()
    take_home: TakeHomeSpec = TakeHomeSpec()  # the merge a user takes home (mmmo.spec.take_home)

    @field_validator("name")
    @classmethod
    def _name_is_a_folder_name(cls, v: str, info: pydantic.ValidationInfo) -> str:
        # The default run folder is runs/<name>: an empty name, a separator or '..' would put it elsewhere, and a
        # control character would break the one-line messages and reports that show the name. A run started
        # before this rule (name: org/model) must still load: not for `earlier` specs.
        if info.context and info.context.get("earlier"):
            return v
        if v in ("", ".", "..") or re.search(r"[/\\\x00-\x1f\x7f]", v):
            raise ValueError(f"{v!r} cannot name a run folder: use a name without '/', '\\' or control characters")
        return v

    @field_validator("models", mode="before")
    @classmethod
    def _models_from_strings(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"path": m} if isinstance(m, str) else m for m in v]
        return v

    @field_validator("models")
    @classmethod
    def _models_nonempty(cls, v: list[ModelRef]) -> list[ModelRef]:
        if not v:
            raise ValueError("needs at least one fine-tuned model")
        return v

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: list[ObjectiveSpec]) -> list[ObjectiveSpec]:
        names = [o.name for o in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate objective name(s): {', '.join(dupes)}")
        if not any(o.type == "lm_eval" for o in v):
            raise ValueError("needs at least one lm_eval task objective (sparsity alone has nothing to trade off)")
        if sum(o.type == "sparsity" for o in v) > 1:
            raise ValueError("at most one sparsity objective")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> SearchSpec:
        if self.search_space.density is not None and not self.merge.has_density:
            raise ValueError(f"search_space.density: method {', '.join(map(repr, self.merge.methods))} has no "
                             f"density (only {', '.join(sorted(DENSITY_METHODS))} do)")
        opt, methods = self.optimizer, self.merge.methods
        if self.merge.is_mixed and opt.standard_recipes and opt.initial < len(methods):
            raise ValueError(f"optimizer.initial ({opt.initial}) is smaller than the {len(methods)} methods of "
                             "merge.method: the initial design opens with one standard recipe per method")
        names = [m.name or default_model_name(m.path) for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"models: duplicate model name(s) {', '.join(dupes)}; give each a distinct 'name'")
        for m, n in zip(self.models, names):
            m.name = n
        self.take_home.check([o.name for o in self.objectives], names, self.evaluation.evaluate_sources)
        return self

    @property
    def density_bounds(self) -> Bounds | None:
        """Density bounds searched, or None when no method has a density."""
        if not self.merge.has_density:
            return None
        return self.search_space.density or DEFAULT_DENSITY_BOUNDS

    @property
    def schedule(self) -> Literal["batch", "async"]:
        """`optimizer.schedule`, "auto" resolved by the evaluators' count (measured: benchmarks/RESULTS.md)."""
        if self.optimizer.schedule != "auto":
            return self.optimizer.schedule
        return "async" if self.evaluation.workers > 1 else "batch"

    @property
    def evaluators_in_ray(self) -> bool:
        """Whether candidates are scored in Ray actors: several evaluators, or one under the asynchronous schedule
        (in its own process, so that the optimiser proposes the next candidate while it scores this one)."""
        return self.evaluation.workers > 1 or self.schedule == "async"

    @property
    def model_names(self) -> list[str]:
        return [m.name for m in self.models]

    @property
    def task_objectives(self) -> list[ObjectiveSpec]:
        return [o for o in self.objectives if o.type == "lm_eval"]

    @property
    def run_dir(self) -> Path:
        return Path(self.output.dir or f"runs/{self.name}")


def default_model_name(path: str) -> str:
    """A short name for a model path or hub id: its last path component."""
    return Path(path.rstrip("/")).name or path


def is_hub_id(ref: str) -> bool:
    """True for `org/name` references that do not exist as local folders."""
    return bool(_HUB_ID.match(ref)) and not ref.startswith((".", "/", "~"))


def _local_path(ref: str, root: Path, field: str) -> Path:
    """`ref` with `~` expanded, relative to `root`; SpecError for what no file system takes (a NUL, `~nobody`)."""
    if "\x00" in ref:
        raise SpecError(f"{field}: a path cannot hold a NUL character: {ref!r}")
    try:
        p = Path(ref).expanduser()
    except RuntimeError:  # `~name` of a user this machine does not have
        raise SpecError(f"{field}: cannot expand '~' in {ref!r} (no such user's home)") from None
    return p if p.is_absolute() else root / p


def _resolve_model_path(ref: str, root: Path, field: str) -> str:
    candidate = _local_path(ref, root, field)
    if candidate.exists():
        return str(candidate.resolve())
    if is_hub_id(ref):
        return ref
    raise SpecError(f"{field}: path does not exist: {candidate}")


def spec_from_dict(data: Any, root: Path, check_paths: bool = True, *, earlier: bool = False) -> SearchSpec:
    """Validate a spec dict; relative paths resolve against `root`; `earlier`: a run's own (stored) spec."""
    if not isinstance(data, dict):
        raise SpecError("the spec must be a YAML mapping (key: value pairs) at the top level")
    try:
        spec = SearchSpec.model_validate(data, context={"earlier": earlier})
    except ValidationError as err:
        raise SpecError(validation_message(err)) from None
    if check_paths:
        spec.base_model = _resolve_model_path(spec.base_model, root, "base_model")
        for i, m in enumerate(spec.models):
            m.path = _resolve_model_path(m.path, root, f"models.{i}.path")
        if spec.tasks_dir is not None:
            td = _local_path(spec.tasks_dir, root, "tasks_dir")
            if not td.is_dir():
                raise SpecError(f"tasks_dir: folder does not exist: {td}")
            spec.tasks_dir = str(td.resolve())
        spec.output.dir = str(_local_path(spec.output.dir or f"runs/{spec.name}", root, "output.dir").resolve())
    return spec


def load_spec(path: str | Path, *, check_paths: bool = True) -> SearchSpec:
    """Read and validate a YAML search spec; raises SpecError with a one-line message.

    With `check_paths=False` only the fields are validated: model paths, hub ids, tasks_dir and output.dir are
    left as written (nothing on disk or on the hub is looked at).
    """
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise SpecError(one_line(f"{path}: malformed YAML{where}: {problem}")) from None
    except UnicodeDecodeError as err:
        raise SpecError(f"{path}: not UTF-8 text (byte {err.start} is {err.object[err.start]:#04x})") from None
    except RecursionError:  # the YAML parser recurses once per level
        raise SpecError(f"{path}: malformed YAML: nested too deeply") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: the spec must be a YAML mapping (key: value pairs) at the top level")
    return spec_from_dict(data, path.parent.resolve(), check_paths=check_paths)


def spec_to_dict(spec: SearchSpec) -> dict[str, Any]:
    """The resolved spec as plain data (for spec.yaml in the run folder)."""
    return spec.model_dump(mode="json", by_alias=True)
