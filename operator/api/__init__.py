"""The API: the four custom resources as pydantic models, CRD generation, manifest loading and
the translation of resources into planner inputs."""

from prfaas.operator.api.manifests import ManifestProblem, Manifests, load_manifests, read_manifests
from prfaas.operator.api.models import DecodeCluster, InterDCLink, PrefillCluster, ServingPlan

__all__ = [
    "DecodeCluster",
    "InterDCLink",
    "ManifestProblem",
    "Manifests",
    "PrefillCluster",
    "ServingPlan",
    "load_manifests",
    "read_manifests",
]
