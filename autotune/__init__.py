"""onnx-autotune: measured auto-tuning of ONNX models for ONNX Runtime."""

ENV_ID = "autotune/OnnxTune-v0"


def register_envs() -> None:
    """Registers `autotune/OnnxTune-v0` with Gymnasium (once). Gymnasium calls this through the
    package's `gymnasium.envs` entry point when it is imported, so `gymnasium.make` finds the
    environment without importing autotune first."""
    from gymnasium.envs.registration import register, registry

    if ENV_ID not in registry:
        register(id=ENV_ID, entry_point="autotune.env:OnnxTuneEnv")
