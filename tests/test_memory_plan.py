"""The memory plan made before any weight is loaded: its sizes are the sums over the tensors in the headers, its
choice is the Merger's own, a 7B run is placed (or refused in one line) by the device's size without a byte of
tensor data read, and `mmmo validate` / `mmmo search` say so."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors import safe_open
from typer.testing import CliRunner

import mmmo.api
import mmmo.spec.validate
from mmmo.cli import app
from mmmo.merge import memory
from mmmo.merge.memory_plan import GIB, RunMemoryPlan, ScoringEstimate
from mmmo.merge.sources.checkpoint import Checkpoint
from mmmo.runtime.errors import MmmoError
from mmmo.spec.schema import load_spec
from mmmo.spec.validate import DeviceProbe, check_memory, memory_lines, plan_spec_memory

REPO = Path(__file__).resolve().parent.parent
EXAMPLE_7B = REPO / "configs" / "examples" / "qwen2.5-7b-instruct-math-code.yaml"
CUDA = torch.device("cuda", 0)
HOST = 120 * GIB


def _prod(shape: Any) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def _plan(spec_path: Path, probe: DeviceProbe) -> RunMemoryPlan:
    plan = plan_spec_memory(load_spec(spec_path), probe)
    assert isinstance(plan, RunMemoryPlan), plan
    return plan


# ------------------------------------------------------------------ the demo: every byte by hand


def test_demo_plan_is_the_sum_over_its_tensors(demo_spec) -> None:
    spec_path = demo_spec(merge={"method": "ties", "dtype": "float32"}, evaluation={"device": "cpu", "batch_size": 16})
    spec = load_spec(spec_path)
    with safe_open(str(Path(spec.base_model) / "model.safetensors"), framework="pt") as sf:
        counts = [_prod(sf.get_slice(k).get_shape()) for k in sf.keys()]  # noqa: SIM118 - not a dict
    numel, largest, n = sum(counts), max(counts), len(spec.models)
    config = json.loads((Path(spec.base_model) / "config.json").read_text())
    free = 64 * GIB
    plan = _plan(spec_path, DeviceProbe(torch.device("cpu"), torch.float32, free, free))

    f32 = 4
    tokens = min(2048, config["max_position_embeddings"])  # 64: the demo's context
    per_token = 16 * tokens * f32  # batch 16
    scoring = ScoringEstimate(
        batch=16, tokens=tokens,
        kv_cache=per_token * 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * config["head_dim"],
        logits=per_token * 2 * config["vocab_size"],
        activations=per_token * (2 * config["hidden_size"] + 3 * config["intermediate_size"]
                                 + config["num_attention_heads"] * tokens),
    )
    assert plan.scoring == scoring
    common = {"live model": numel * f32, "scoring": scoring.total}
    stored = {"base copy": numel * f32, "task vectors": n * numel * f32}
    # TIES' tables: sorted magnitude (float32) + int32 position per parameter and model; without them its selection
    # keeps a float32 magnitude copy and two boolean brackets of the largest tensor.
    tables = n * numel * (f32 + 4)
    buffers = largest * (f32 + 2)
    assert plan.placement("resident + tables").device == {**common, **stored, "tables": tables}
    assert plan.placement("resident").device == {**common, **stored, "merge buffers": buffers}
    streamed = plan.placement("streamed")
    assert streamed.device == {**common, "one tensor staged": 0, "merge buffers": buffers}  # CPU: nothing copied
    assert streamed.host == stored
    assert plan.chosen == "resident + tables"
    assert plan.refusal() is None


def test_a_search_over_methods_plans_every_methods_tables(demo_spec) -> None:
    spec_path = demo_spec(merge={"method": ["ties", "dare_ties", "task_arithmetic"], "dtype": "float32"})
    free = 64 * GIB
    plan = _plan(spec_path, DeviceProbe(torch.device("cpu"), torch.float32, free, free))
    single = _plan(demo_spec(merge={"method": "ties", "dtype": "float32"}), DeviceProbe(torch.device("cpu"),
                                                                                       torch.float32, free, free))
    n, numel = plan.sizes.n_models, plan.sizes.numel
    with_tables = plan.placement("resident + tables").device
    assert with_tables["tables"] == single.placement("resident + tables").device["tables"]  # the first method's
    assert with_tables["other methods' tables (where they fit)"] == n * numel * 12  # DARE's draws, sorted, L1 sums
    assert plan.chosen == single.chosen == "resident + tables"


def test_a_cpu_run_that_fits_nowhere_is_refused_with_its_bytes(demo_spec, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_spec(demo_spec(merge={"method": "ties", "dtype": "float32"}, evaluation={"batch_size": 16}))
    plan = plan_spec_memory(spec, DeviceProbe(torch.device("cpu"), torch.float32, None, 0))
    assert isinstance(plan, RunMemoryPlan) and plan.scoring is not None
    streamed = plan.placement("streamed")
    # Refused only when even one sequence at a time does not fit: the batch's scoring counts for 1/16th.
    least = streamed.device_bytes - plan.scoring.total + plan.scoring.total // 16 + streamed.host_bytes
    free = least - 1
    monkeypatch.setattr(
        mmmo.spec.validate, "probe_device", lambda spec, strict: DeviceProbe(torch.device("cpu"), torch.float32, free, free)
    )
    with pytest.raises(MmmoError) as err:
        check_memory(spec)
    assert str(err.value) == (
        f"this run does not fit in memory: it needs {least / 2**20:.1f} MiB of memory ({free / 2**20:.1f} MiB "
        "available); use a device with more free memory, a smaller merge.dtype or fewer models"
    )
    monkeypatch.setattr(
        mmmo.spec.validate, "probe_device", lambda spec, strict: DeviceProbe(torch.device("cpu"), torch.float32, least, least)
    )
    # It fits one sequence at a time, not the batch of 16: run, but warned.
    assert check_memory(spec).endswith("the estimate exceeds what is free now, so it may run out of memory")


@pytest.mark.parametrize("room", ["streamed", "resident", "resident + tables"])
def test_the_merger_chooses_what_the_plan_says(demo_spec, monkeypatch: pytest.MonkeyPatch, room: str) -> None:
    from mmmo.merge.merger import Merger

    spec = load_spec(demo_spec(merge={"method": "ties", "dtype": "float32"}))
    plan = plan_spec_memory(spec, DeviceProbe(torch.device("cpu"), torch.float32, None, 0))
    assert isinstance(plan, RunMemoryPlan) and plan.chosen is None
    store = sum(plan.placement("streamed").host.values())
    tables = plan.placement("resident + tables").device["tables"]
    # RAM left beside the live model once it is loaded, which is what the Merger measures: just under, or just
    # over, what the base and task vectors (and the tables) need at 70%.
    beside = {"streamed": store / 0.7 - 64, "resident": store / 0.7 + 64, "resident + tables": (store + tables) / 0.7 + 64}
    left = int(beside[room])
    monkeypatch.setattr(memory, "available_host_bytes", lambda: left)
    live = plan.placement("streamed").device["live model"]
    plan = plan_spec_memory(spec, DeviceProbe(torch.device("cpu"), torch.float32, left + live, left + live))
    assert isinstance(plan, RunMemoryPlan)
    assert plan.chosen == room
    merger = Merger(spec.base_model, [m.path for m in spec.models], method="ties", dtype=torch.float32, fused=False)
    assert merger.numel == plan.sizes.numel
    assert (merger.resident, merger.precomputed) == {
        "streamed": (False, False), "resident": (True, False), "resident + tables": (True, True)
    }[room]
    assert merger.precompute_bytes == (tables if room == "resident + tables" else 0)


# ------------------------------------------------------------------ a 7B run from synthetic headers

LAYERS, HIDDEN, INTER, VOCAB, HEADS, KV_HEADS = 28, 3584, 18944, 152064, 28, 4
HEAD_DIM = HIDDEN // HEADS


def _qwen_shapes() -> dict[str, list[int]]:
    shapes = {"model.embed_tokens.weight": [VOCAB, HIDDEN], "model.norm.weight": [HIDDEN],
              "lm_head.weight": [VOCAB, HIDDEN]}
    kv = KV_HEADS * HEAD_DIM
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": [HIDDEN, HIDDEN], p + "self_attn.q_proj.bias": [HIDDEN],
            p + "self_attn.k_proj.weight": [kv, HIDDEN], p + "self_attn.k_proj.bias": [kv],
            p + "self_attn.v_proj.weight": [kv, HIDDEN], p + "self_attn.v_proj.bias": [kv],
            p + "self_attn.o_proj.weight": [HIDDEN, HIDDEN],
            p + "mlp.gate_proj.weight": [INTER, HIDDEN], p + "mlp.up_proj.weight": [INTER, HIDDEN],
            p + "mlp.down_proj.weight": [HIDDEN, INTER],
            p + "input_layernorm.weight": [HIDDEN], p + "post_attention_layernorm.weight": [HIDDEN],
        }
    return shapes


# Qwen2.5-7B by hand: embeddings and an untied head, then per layer q/o (square), k/v (512 rows) with biases,
# three MLP matrices and two norms, and the final norm.
PER_LAYER = 2 * HIDDEN * HIDDEN + HIDDEN + 2 * (512 * HIDDEN + 512) + 3 * HIDDEN * INTER + 2 * HIDDEN
NUMEL_7B = 2 * VOCAB * HIDDEN + LAYERS * PER_LAYER + HIDDEN


def _write_header_only(folder: Path, shapes: dict[str, list[int]]) -> None:
    """A bf16 safetensors file whose data section is a hole (f.truncate): the right size, no byte written."""
    folder.mkdir(parents=True)
    header, offset = {}, 0
    for name, shape in shapes.items():
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + 2 * _prod(shape)]}
        offset += 2 * _prod(shape)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    with open(folder / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(blob)) + blob)
        f.truncate(8 + len(blob) + offset)
    config = {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": HIDDEN,
        "intermediate_size": INTER, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "vocab_size": VOCAB, "max_position_embeddings": 131072,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    }
    (folder / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def spec_7b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the 7B example (dare_ties, bf16, three experts) pointed at header-only checkpoints."""
    root = tmp_path_factory.mktemp("qwen7b")
    shapes = _qwen_shapes()
    for name in ("base", "instruct", "math", "coder"):
        _write_header_only(root / name, shapes)
    data = yaml.safe_load(EXAMPLE_7B.read_text())
    data["base_model"] = "base"
    data["models"] = [{"path": n, "name": n} for n in ("instruct", "math", "coder")]
    data["output"]["dir"] = str(root / "run")
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def no_weights_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any read of tensor data, or any evaluator built, fails the test."""

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("tensor data read or evaluator built")

    monkeypatch.setattr(Checkpoint, "read", refuse)
    monkeypatch.setattr(Checkpoint, "reader", refuse)
    monkeypatch.setattr(mmmo.api, "make_pool", refuse)


def _fake_gpu(monkeypatch: pytest.MonkeyPatch, gib: int) -> None:
    monkeypatch.setattr(
        mmmo.spec.validate, "probe_device", lambda spec, strict: DeviceProbe(CUDA, torch.bfloat16, gib * GIB, HOST)
    )


def _hand_7b() -> dict[str, int]:
    """Bytes of the 7B run by hand: bf16 (2 bytes), 3 task vectors, DARE's 12-byte tables, batch 1 × 2048 tokens."""
    live = 2 * NUMEL_7B
    embed = VOCAB * HIDDEN  # the largest tensor
    tokens = 2048
    scoring = tokens * 2 * (2 * LAYERS * KV_HEADS * HEAD_DIM + 2 * VOCAB + 2 * HIDDEN + 3 * INTER + HEADS * tokens)
    buffers = embed * (3 * 4 + 2 * 2)  # DARE without tables: float32 draws per model, a mask and a masked copy
    return {
        "live": live,
        "store": 4 * live,
        "tables": 3 * NUMEL_7B * 12,
        "scoring": scoring,
        "resident": live + 4 * live + buffers + scoring,
        "streamed_device": live + 4 * 2 * embed + buffers + scoring,  # one tensor (the embeddings) staged
    }


def test_7b_sizes_from_the_headers_alone(spec_7b: Path, no_weights_read: None) -> None:
    plan = _plan(spec_7b, DeviceProbe(CUDA, torch.bfloat16, 80 * GIB, HOST))
    hand = _hand_7b()
    assert plan.sizes.numel == NUMEL_7B == 7_615_616_512
    assert plan.scoring is not None and plan.scoring.total == hand["scoring"]
    assert plan.placement("resident + tables").device_bytes == hand["live"] + hand["store"] + hand["tables"] + hand[
        "scoring"]
    assert plan.placement("resident").device_bytes == hand["resident"]
    streamed = plan.placement("streamed")
    assert (streamed.device_bytes, streamed.host_bytes) == (hand["streamed_device"], hand["store"])


@pytest.mark.parametrize(
    ("gib", "chosen"),
    # 80 GiB: base + task vectors (56.7 GiB) exceed 70% of the 65.8 GiB the live model leaves; 141 GiB (an H200)
    # holds them, never the 255 GiB of DARE tables.
    [(80, "streamed"), (141, "resident")],
)
def test_7b_placement_by_device_size(spec_7b: Path, no_weights_read: None, gib: int, chosen: str) -> None:
    plan = _plan(spec_7b, DeviceProbe(CUDA, torch.bfloat16, gib * GIB, HOST))
    assert plan.chosen == chosen
    assert plan.fits(plan.placement(chosen)) is True
    assert plan.refusal() is None
    assert not plan.fits(plan.placement("resident + tables"))


def test_7b_on_24_gib_is_refused_in_one_line_before_any_weight_is_read(
    spec_7b: Path, no_weights_read: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_gpu(monkeypatch, 24)
    hand = _hand_7b()
    with pytest.raises(MmmoError) as err:
        check_memory(load_spec(spec_7b))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("this run does not fit in memory: even with its task vectors streamed")
    assert f"needs {hand['streamed_device'] / GIB:.2f} GiB on cuda:0 (24.00 GiB free)" in message
    assert f"and {hand['store'] / GIB:.2f} GiB of host memory (120.00 GiB available)" in message

    result = CliRunner().invoke(app, ["search", str(spec_7b)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert lines == [f"error: {message}"]


def test_7b_search_says_its_placement_before_building_the_evaluator(
    spec_7b: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_gpu(monkeypatch, 80)

    class PoolReached(Exception):
        pass

    def pool(*_args: Any, **_kwargs: Any) -> Any:
        raise PoolReached

    monkeypatch.setattr(mmmo.api, "make_pool", pool)
    with pytest.raises(PoolReached):
        mmmo.api.search(spec_7b)
    err = capsys.readouterr().err
    said = [line[line.index("memory: "):] for line in err.splitlines() if "memory: " in line]  # after any timestamp
    assert len(said) == 1
    assert said[0].startswith("memory: task vectors streamed (")
    assert "exceed 70% of the 65.81 GiB the live model leaves (46.07 GiB)" in said[0]


def test_validate_prints_the_7b_plan(spec_7b: Path, no_weights_read: None, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_gpu(monkeypatch, 80)
    monkeypatch.setattr(mmmo.spec.validate, "check_tasks", lambda spec: "tasks: not built in this test (no network)")
    result = CliRunner().invoke(app, ["validate", str(spec_7b)])
    assert result.exit_code == 0, result.output
    hand = _hand_7b()
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("memory: "))
    resident_tables = hand["live"] + hand["store"] + hand["tables"] + hand["scoring"]
    assert lines[start:start + 6] == [
        "memory: 7.62B parameters × (base + 3 model(s)) in bfloat16 on cuda:0 (80.00 GiB free, host 120.00 GiB "
        "available); from the tensor headers, no weights read",
        f"  resident + tables: device {resident_tables / GIB:.2f} GiB, host 0 GiB — does not fit",
        f"  resident: device {hand['resident'] / GIB:.2f} GiB, host 0 GiB — does not fit",
        f"  streamed: device {hand['streamed_device'] / GIB:.2f} GiB, host {hand['store'] / GIB:.2f} GiB — fits",
        f"  task vectors streamed ({hand['streamed_device'] / GIB:.2f} GiB of 80.00 GiB free on cuda:0, "
        f"{hand['store'] / GIB:.2f} GiB of 120.00 GiB host memory): base + task vectors ({hand['store'] / GIB:.2f} "
        "GiB) exceed 70% of the 65.81 GiB the live model leaves (46.07 GiB)",
        f"  scoring estimate {hand['scoring'] / GIB:.2f} GiB: batch 1 × 2048 tokens (assumed: 2048 per sequence, at "
        "most the model's context), KV cache 0.11 GiB, logits 1.16 GiB, activations 0.46 GiB; longer sequences or "
        "larger batches need more",
    ]
    assert lines[-1] == "ok"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_validate_without_the_gpu_plans_bytes_and_leaves_the_choice_to_load_time(
    spec_7b: Path, no_weights_read: None
) -> None:
    lines = memory_lines(load_spec(spec_7b))  # device: cuda, which this machine lacks
    assert "(free memory not measured here)" in lines[0]
    assert lines[1].endswith("GiB")  # bytes, no verdict
    assert "  placement chosen at load time (cuda is not available on this machine)" in lines


def test_hub_sources_are_planned_at_load_time() -> None:
    spec = load_spec(EXAMPLE_7B)  # hub ids: nothing local to read
    line = "memory: planned at load time (hub sources: their tensor headers are not on this machine yet)"
    assert memory_lines(spec) == [line]
    assert check_memory(spec) == line


@pytest.mark.parametrize(
    ("workers", "schedule", "plans"),
    [(2, "auto", "each of the 2 workers plans its own"), (1, "async", "the Ray worker plans its own")],
)
def test_a_ray_run_is_not_refused_for_a_device_only_its_workers_have(
    spec_7b: Path, no_weights_read: None, workers: int, schedule: str, plans: str
) -> None:
    spec = load_spec(spec_7b)  # device: cuda
    # the GPUs are the Ray workers' (one alone under async: its own process), not this driver's
    spec.evaluation.workers, spec.optimizer.schedule = workers, schedule
    assert spec.evaluators_in_ray
    if not torch.cuda.is_available():
        single = load_spec(spec_7b)
        assert not single.evaluators_in_ray
        with pytest.raises(MmmoError):
            check_memory(single)  # one process on this machine: the device it lacks is refused
    line = check_memory(spec)
    assert line.startswith("memory: ")
    expected = plans if torch.cuda.is_available() else "cuda is not available on this machine"
    assert expected in line
