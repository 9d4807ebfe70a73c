"""Latency models: the GPU/model catalog, profiles (published, fitted, measured), roofline and
cross-GPU transfer, and ``latency_model()``, the best model the planner has for one instance."""

from prfaas.planner.latency.catalog import GPUS, MODELS, GpuSpec, ModelArch
from prfaas.planner.latency.model import InstanceLatency, LatencyModel, LatencySource

__all__ = [
    "GPUS",
    "MODELS",
    "GpuSpec",
    "InstanceLatency",
    "LatencyModel",
    "LatencySource",
    "ModelArch",
]
