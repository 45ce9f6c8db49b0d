"""Hostile checkpoints, found by a fuzzer: safetensors files truncated, with a header length that lies, a header
that is not a JSON object, offsets beyond the file, shapes that do not match the sizes, unknown dtypes; and broken
config.json and weight index files. Opening, checking compatibility and reading work or raise one line naming the
file, never a traceback.

Settings (seed, examples) in fuzzing.py; each minimal failing example the fuzzer found is kept as an @example.
"""

from __future__ import annotations

import copy
import json
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from fuzzing import FUZZ, VALUES, assert_one_line, node_at, paths_in
from hypothesis import example, given
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save, save_file
from tiny_models import VOCAB_SIZE, make_base, make_expert

from mmmo.merge.merger import Merger
from mmmo.merge.sources.checkpoint import check_compatible, open_checkpoint
from mmmo.runtime.errors import MmmoError

CONFIG = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 6}
TENSORS = {
    "model.embed_tokens.weight": torch.arange(12, dtype=torch.float32).reshape(6, 2),
    "model.norm.weight": torch.ones(2, dtype=torch.bfloat16),
    "lm_head.weight": torch.zeros(6, 2, dtype=torch.float16),
}
DTYPES = ["F32", "F16", "BF16", "F64", "I64", "I32", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2", "F4", "C64", "XYZ",
          "", "f32"]


def _write_model(folder: Path, weights: bytes | None = None, config: bytes | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_bytes(json.dumps(CONFIG).encode() if config is None else config)
    save_file(TENSORS, str(folder / "model.safetensors"))
    if weights is not None:
        (folder / "model.safetensors").write_bytes(weights)
    return folder


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`base/`: a valid model; `model/`: rewritten by each example."""
    root = tmp_path_factory.mktemp("fuzz-checkpoint")
    _write_model(root / "base")
    return root


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    n = struct.unpack("<Q", data[:8])[0]
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _join(header: Any, body: bytes, length: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + body


VALID = save(TENSORS)
HEADER, BODY = _split(VALID)


def _with_entry(name: str, **changes: Any) -> bytes:
    """VALID with one header entry changed."""
    header = copy.deepcopy(HEADER)
    header[name].update(changes)
    return _join(header, BODY)


def test_the_valid_model_opens_and_matches(root: Path) -> None:
    base = open_checkpoint(root / "base")
    model = open_checkpoint(_write_model(root / "model"))
    check_compatible(base, [model])
    assert model.shapes() == {n: tuple(t.shape) for n, t in TENSORS.items()}
    assert all(torch.equal(t, TENSORS[n]) for n, t in model.read(model.names))


@st.composite
def hostile_files(draw: st.DrawFn, valid: bytes) -> bytes:
    """A safetensors file made hostile in one of the ways a damaged or forged one is."""
    header, body = _split(valid)
    kind = draw(st.sampled_from(["truncated", "length", "header_value", "mutated", "entries", "bytes"]))
    if kind == "truncated":
        return valid[: draw(st.integers(0, len(valid) - 1))]
    if kind == "length":  # the length prefix lies (past the file, inside the JSON, absurdly large)
        return _join(header, body, draw(st.integers(0, 2**64 - 1) | st.integers(0, len(valid) + 8)))
    if kind == "header_value":  # any JSON value as the header, NaN included
        return _join(draw(VALUES), body)
    if kind == "mutated":  # a field of the valid header removed, or set to a random value
        header = copy.deepcopy(header)
        path = draw(st.sampled_from(paths_in(header)))
        parent, key = node_at(header, path[:-1]), path[-1]
        if draw(st.booleans()):
            del parent[key]
        else:
            parent[key] = draw(VALUES)
        return _join(header, body)
    if kind == "entries":  # entries with any dtype, shape and offsets: past the end, reversed, overlapping
        names = st.sampled_from([*TENSORS, "extra", "__metadata__"])
        dims = st.integers(-2, 2**40) | st.integers(0, 8)
        offsets = st.lists(st.integers(-1, 2**40) | st.integers(0, len(body) + 8), min_size=0, max_size=3)
        entry = st.fixed_dictionaries({"dtype": st.sampled_from(DTYPES), "shape": st.lists(dims, max_size=3),
                                       "data_offsets": offsets})
        return _join(draw(st.dictionaries(names, entry, max_size=4)), draw(st.binary(max_size=64)))
    return draw(st.binary(max_size=120))


def _open_or_refuse(root: Path) -> None:
    """Opening, shapes, compatibility both ways and reading every tensor: work, or one line naming the file."""
    folder = root / "model"
    try:
        model = open_checkpoint(folder)
        model.shapes()
        base = open_checkpoint(root / "base")
        for pair in ((base, model), (model, base)):
            try:
                check_compatible(pair[0], [pair[1]])
            except Exception as err:  # noqa: BLE001 - a mismatch is fine, if said in one line naming a model
                assert_one_line(err, names=folder)
        for _, t in model.read(model.names):
            assert isinstance(t, torch.Tensor)
        with model.reader() as get:
            [get(n) for n in model.names]
    except Exception as err:  # noqa: BLE001 - which exception escapes is what is under test
        assert_one_line(err, names=folder)


# Found by the fuzzer: every one escaped as safetensors' SafetensorError (b"": "header too small"); the others are
# the damage the fuzzer makes, each kept so that the fast suite always meets it.
@example(weights=b"")
@example(weights=VALID[:-1])  # truncated: the last tensor's data ends past the file
@example(weights=_join(HEADER, BODY, 2**64 - 1))  # a header length past the file
@example(weights=_join(HEADER, BODY, 3))  # a header length inside the JSON
@example(weights=_join([1, 2], BODY))  # a header that is not a JSON object
@example(weights=_with_entry("lm_head.weight", data_offsets=[0, 2**40]))  # offsets beyond the file
@example(weights=_with_entry("lm_head.weight", shape=[7, 2]))  # a shape that does not match the size
@example(weights=_with_entry("lm_head.weight", dtype="XYZ"))  # an unknown dtype
@example(weights=_with_entry("model.norm.weight", dtype="F8_E4M3", shape=[4]))  # a dtype torch may lack
@FUZZ
@given(weights=hostile_files(VALID))
def test_a_hostile_safetensors_file_opens_or_is_refused_naming_it(weights: bytes, root: Path) -> None:
    _write_model(root / "model", weights=weights)
    _open_or_refuse(root)


@example(config=b"null")  # found by the fuzzer: AttributeError
@example(config=b"\x80")  # found by the fuzzer: UnicodeDecodeError
@example(config=b'{"architectures": 5}')
@example(config=b"[" * 100000)
@FUZZ
@given(config=VALUES.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=40))
def test_a_hostile_config_is_refused_naming_it(config: bytes, root: Path) -> None:
    _write_model(root / "model", config=config)
    _open_or_refuse(root)


@FUZZ
@given(index=VALUES | st.fixed_dictionaries({"weight_map": VALUES}) | st.fixed_dictionaries(
    {"weight_map": st.dictionaries(st.sampled_from(sorted(TENSORS)), st.sampled_from(
        ["model.safetensors", "missing.safetensors", "", ".", "..", "config.json", "/etc/hostname", "a\x00b"]))}))
@example(index=None)  # found by the fuzzer: TypeError
@example(index={"weight_map": None})  # found by the fuzzer: AttributeError
@example(index={"weight_map": {"lm_head.weight": "/etc/hostname"}})
@example(index={"weight_map": {"lm_head.weight": "../base/model.safetensors"}})
@example(index={"weight_map": {"lm_head.weight": "config.json"}})
def test_a_hostile_weight_index_is_refused_naming_it(index: Any, root: Path) -> None:
    folder = _write_model(root / "model")
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    try:
        _open_or_refuse(root)
    finally:
        (folder / "model.safetensors.index.json").unlink()


def test_an_unreadable_model_folder_is_refused_naming_it(root: Path) -> None:
    folder = _write_model(root / "model")
    (folder / "model.safetensors").unlink()
    shutil.copy(root / "base" / "model.safetensors", folder / "a.safetensors")
    shutil.copy(root / "base" / "model.safetensors", folder / "b.safetensors")
    with pytest.raises(Exception) as err:
        open_checkpoint(folder)
    assert "several .safetensors files" in assert_one_line(err.value, names=folder)
    for f in ("a.safetensors", "b.safetensors"):
        (folder / f).unlink()


# ------------------------------------------------------------------ a mismatched source, refused from headers


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Llama base, an expert of it, one with a larger vocabulary and one with a wider MLP."""
    root = tmp_path_factory.mktemp("mismatch")
    base = make_base(root / "base")
    return {
        "base": base,
        "expert": make_expert(base, root / "expert", seed=1),
        "vocab": make_base(root / "vocab", seed=2, vocab_size=VOCAB_SIZE + 8),
        "mlp": make_base(root / "mlp", seed=3, intermediate_size=48),
    }


class NoWeights:
    """`safetensors.safe_open` that serves headers (names, shapes) and refuses to hand out any tensor."""

    real = staticmethod(safe_open)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.handle = self.real(*args, **kwargs)

    def __enter__(self) -> NoWeights:
        self.handle.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.handle.__exit__(*exc)

    def keys(self) -> list[str]:
        return self.handle.keys()

    def get_slice(self, name: str) -> Any:
        return self.handle.get_slice(name)  # its get_shape reads the header only

    def get_tensor(self, name: str) -> torch.Tensor:
        raise AssertionError(f"a weight was read: {name}")


@pytest.mark.parametrize(("source", "tensor", "said"), [
    ("vocab", "lm_head.weight", f"[{VOCAB_SIZE + 8}, 16] in {{path}} (vocab_size {VOCAB_SIZE} in base, "
                                f"{VOCAB_SIZE + 8} in this model: another tokenizer's vocabulary)"),
    ("mlp", "model.layers.0.mlp.down_proj.weight", "[16, 48] in {path}"),
])
def test_a_mismatched_source_is_refused_before_any_weight_is_read(
    source: str, tensor: str, said: str, sources: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import safetensors
    import safetensors.torch
    import transformers

    def no_load(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(safetensors, "safe_open", NoWeights)
    monkeypatch.setattr(safetensors.torch, "load_file", no_load)
    monkeypatch.setattr(torch, "load", no_load)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_load)
    for models in ([sources["expert"], sources[source]], [sources[source]]):
        with pytest.raises(MmmoError) as err:
            Merger(sources["base"], models, method="ties")
        message = assert_one_line(err.value, names=sources[source])
        assert message.startswith(f"tensor {tensor} has shape ") and said.format(path=sources[source]) in message
    # `mmmo validate` makes the same check, on the headers too
    base, bad = open_checkpoint(sources["base"]), open_checkpoint(sources[source])
    with pytest.raises(MmmoError, match=f"^tensor {tensor} has shape "):
        check_compatible(base, [bad])
    with pytest.raises(AssertionError, match="a model was loaded|a weight was read"):  # the guards do guard
        Merger(sources["base"], [sources["expert"]], method="ties")
