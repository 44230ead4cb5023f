"""onnx-autotune: measured auto-tuning of ONNX models for ONNX Runtime.

`import autotune` registers the Gymnasium environment `autotune/OnnxTune-v1` (when Gymnasium is
installed: `autotune.runtime` alone needs only onnxruntime), so that, as with ale_py,

    import gymnasium, autotune
    gymnasium.register_envs(autotune)
    env = gymnasium.make("autotune/OnnxTune-v1", workload="zoo:digits_cnn")
"""

ENV_ID = "autotune/OnnxTune-v1"


def register_envs() -> None:
    """Registers `autotune/OnnxTune-v1` with Gymnasium (once); `import autotune` does.
    (Gymnasium 1.x no longer loads environments from packages' entry points.)"""
    from gymnasium.envs.registration import register, registry

    if ENV_ID not in registry:
        register(id=ENV_ID, entry_point="autotune.env:OnnxTuneEnv")


try:
    register_envs()
except ImportError:  # Gymnasium is not installed: a deployment with only onnxruntime
    pass
