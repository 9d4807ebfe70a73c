"""vLLM engines: launch (the one place engine flags are spelled), the CPU compatibility shim and
the tiny generated model for tests and demos."""

from prfaas.engine.vllm.launch import EngineLaunch, vllm_argv, vllm_env

__all__ = ["EngineLaunch", "vllm_argv", "vllm_env"]
