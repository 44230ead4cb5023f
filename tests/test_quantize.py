"""Static INT8: activation ranges are calibrated once per model, data and method, then reused."""
from autotune import workload
from autotune.paths import cache_dir
from autotune.plan import Plan, Quantization, apply


def test_calibration_is_reused_and_gives_the_same_model(mlp_path, tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path / "cache"))
    w = workload.load(str(mlp_path))
    ranges = cache_dir() / "calibration"
    before = set()
    plan = Plan(quantization=Quantization(mode="static", calibration="percentile"))
    first = apply(plan, mlp_path, w.data_file(), tmp_path / "a")
    made = set(ranges.glob("*.json")) - before
    assert len(made) == 1  # calibrated once ...
    per_tensor = Plan(quantization=Quantization(mode="static", calibration="percentile",
                                                per_channel=False))
    apply(per_tensor, mlp_path, w.data_file(), tmp_path / "b")
    assert set(ranges.glob("*.json")) - before == made  # ... and reused for other settings
    again = apply(plan, mlp_path, w.data_file(), tmp_path / "c")
    assert again.model.read_bytes() == first.model.read_bytes()
    apply(Plan(quantization=Quantization(mode="static", calibration="minmax")), mlp_path,
          w.data_file(), tmp_path / "d")
    assert len(set(ranges.glob("*.json")) - before) == 2  # another method: other ranges


def test_entropy_calibration_is_not_minmax(mlp_path, tmp_path, monkeypatch):
    """quantize_static alone runs it on a histogram that leaves each tensor's whole range: the
    model MinMax gives (ORT 1.32)."""
    monkeypatch.setenv("AUTOTUNE_CACHE_DIR", str(tmp_path / "cache"))
    w = workload.load(str(mlp_path))
    models = {method: apply(Plan(quantization=Quantization(mode="static", calibration=method)),
                            mlp_path, w.data_file(), tmp_path / method).model.read_bytes()
              for method in ("minmax", "entropy")}
    assert models["entropy"] != models["minmax"]
