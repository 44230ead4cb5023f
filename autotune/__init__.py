"""onnx-autotune: measured auto-tuning of ONNX models for ONNX Runtime."""

ENV_ID = "autotune/OnnxTune-v1"


def register_envs() -> None:
    """Registers `autotune/OnnxTune-v1` with Gymnasium (once); importing `autotune.env` does.
    (Gymnasium 1.x no longer loads environments from packages' entry points.)"""
    from gymnasium.envs.registration import register, registry

    if ENV_ID not in registry:
        register(id=ENV_ID, entry_point="autotune.env:OnnxTuneEnv")
