"""The Helm chart, rendered and linted by Helm's own Go code (helm-python-sdk), every object
validated against Kubernetes' schemas, and its RBAC compared with what the operator's code uses."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from prfaas.operator.controller.clients import rbac_rules, workload_rules

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "prfaas"
K8S = kubernetes_validate.latest_version()


def _render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with helm.Chart.load(CHART) as chart:
        out = chart.render(values or {}, name="prfaas", namespace="prfaas-system")
    docs: list[dict[str, Any]] = []
    for path, text in sorted(out.items()):
        if path.endswith(".txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def _by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_chart_lints_clean() -> None:
    report = helm.lint(CHART, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


MONITORING = {
    "serviceMonitor": {"enabled": True},
    "grafanaDashboards": {"enabled": True},
    "prometheusRule": {"enabled": True},
}


@pytest.mark.parametrize("values", [{}, {"serviceMonitor": {"enabled": True}}, MONITORING])
def test_rendered_objects_validate(values: dict[str, Any]) -> None:
    docs = _render(values)
    kinds = sorted(d["kind"] for d in docs)
    expected = [
        "ClusterRole",
        "ClusterRole",
        "ClusterRoleBinding",
        "ClusterRoleBinding",
        "Deployment",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    if values:
        expected = sorted([*expected, "ServiceMonitor"])
    if values == MONITORING:
        expected = sorted([*expected, "ConfigMap", "PrometheusRule"])
    assert kinds == expected
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":  # a CRD kind: not in Kubernetes' schemas
            assert doc["spec"]["endpoints"][0]["path"] == "/metrics"
            continue
        if doc["kind"] == "PrometheusRule":  # a CRD kind too (promtool checks the rules)
            groups = doc["spec"]["groups"]
            assert groups and all(r["expr"] for g in groups for r in g["rules"])
            continue
        kubernetes_validate.validate(doc, K8S, strict=True)


def test_chart_crds_are_the_generated_ones_and_validate() -> None:
    generated = {p.name: p.read_text() for p in (REPO / "crds").glob("*.yaml")}
    shipped = {p.name: p.read_text() for p in (CHART / "crds").glob("*.yaml")}
    assert shipped == generated, "run: prfaas crds (writes crds/ and charts/prfaas/crds/)"
    with helm.Chart.load(CHART) as chart:
        crds = chart.crds
    assert len(crds) == 4
    for text in shipped.values():
        kubernetes_validate.validate(yaml.safe_load(text), K8S, strict=True)


def _grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (g, r, v)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


def _roles(docs: list[dict[str, Any]]) -> dict[str, set[tuple[str, str, str]]]:
    return {d["metadata"]["name"]: _grants(d["rules"]) for d in _by_kind(docs, "ClusterRole")}


def test_rbac_grants_exactly_what_the_operator_uses() -> None:
    docs = _render()
    roles = _roles(docs)
    granted = set().union(*roles.values())
    namespaced = _grants(_by_kind(docs, "Role")[0]["rules"])
    assert namespaced == {("", "secrets", "get")}  # kubeconfigs, only in the release namespace
    assert granted | namespaced == _grants(rbac_rules())
    assert not any("*" in g for g in granted)
    # Writes on children live in their own role; nothing watches them.
    assert roles["prfaas-workloads"] == _grants(workload_rules())
    assert {r for _, r, v in roles["prfaas"] if v in ("create", "delete")} == {"events"}
    assert not {r for _, r, v in granted if v == "watch"} & {"deployments", "configmaps"}
    # Without workloadNamespaces the child role is bound cluster-wide (documented default).
    bindings = {b["roleRef"]["name"] for b in _by_kind(docs, "ClusterRoleBinding")}
    assert bindings == {"prfaas", "prfaas-workloads"}
    assert [b for b in _by_kind(docs, "RoleBinding") if "workloads" in b["metadata"]["name"]] == []


def test_workload_namespaces_bind_child_writes_there_only() -> None:
    values = {"operator": {"workloadNamespaces": ["decode", "prefill"]}}
    docs = _render(values)
    for doc in docs:
        kubernetes_validate.validate(doc, K8S, strict=True)
    bindings = {b["roleRef"]["name"] for b in _by_kind(docs, "ClusterRoleBinding")}
    assert bindings == {"prfaas"}  # nothing on children cluster-wide
    local = {
        b["metadata"]["namespace"]
        for b in _by_kind(docs, "RoleBinding")
        if b["roleRef"]
        == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": "prfaas-workloads",
        }
    }
    assert local == {"decode", "prefill"}
    env = _by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "PRFAAS_WORKLOAD_NAMESPACES", "value": "decode,prefill"} in env


def test_operator_pod_is_locked_down() -> None:
    dep = _by_kind(_render(), "Deployment")[0]
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["port"] == "health"
    assert container["command"] == ["python", "-m", "prfaas.operator"]
    assert pod["serviceAccountName"] == _by_kind(_render(), "ServiceAccount")[0]["metadata"]["name"]


def test_argocd_health_script_is_shipped_in_values_and_readme() -> None:
    lua = resources.files("prfaas.operator.controller").joinpath("data/health.lua").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["argocd"]["healthLua"] == lua
    readme = (CHART / "README.md").read_text()
    indented = "\n".join("    " + line if line.strip() else "" for line in lua.splitlines())
    assert indented in readme


def _env(docs: list[dict[str, Any]]) -> dict[str, str]:
    (dep,) = _by_kind(docs, "Deployment")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_routers_run_the_narrow_router_image() -> None:
    """The operator's image carries kopf and the planner; routers get Dockerfile.router's."""
    assert _env(_render())["PRFAAS_ROUTER_IMAGE"].startswith("ghcr.io/prfaas/prfaas-router:")
    tagged = _render({"image": {"repository": "r.example/prfaas", "tag": "1.2"}})
    assert _env(tagged)["PRFAAS_ROUTER_IMAGE"] == "r.example/prfaas-router:1.2"
    mine = _render({"routerImage": "r.example/my-router:3"})
    assert _env(mine)["PRFAAS_ROUTER_IMAGE"] == "r.example/my-router:3"


def test_prfaas_chart_renders_like_helm_template_with_set_and_values(tmp_path: Path) -> None:
    """Users without Helm render the chart offline; ``--set`` wins over ``-f``."""
    from prfaas.operator.cli.app import app
    from typer.testing import CliRunner

    values = tmp_path / "values.yaml"
    values.write_text("image: {repository: from-file/prfaas, tag: '1.2'}\n")
    result = CliRunner().invoke(app, [
        "chart", str(CHART), "-f", str(values), "--set", "image.repository=my.registry/prfaas",
    ])
    assert result.exit_code == 0, result.output
    assert "# Source: prfaas/templates/deployment.yaml" in result.output
    docs = [d for d in yaml.safe_load_all(result.output) if d]
    [deployment] = _by_kind(docs, "Deployment")
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "my.registry/prfaas:1.2"
    assert docs == _render({"image": {"repository": "my.registry/prfaas", "tag": "1.2"}})


def test_prfaas_chart_lint_passes_and_fails_on_a_broken_chart(tmp_path: Path) -> None:
    import shutil

    from prfaas.operator.cli.app import app
    from typer.testing import CliRunner

    ok = CliRunner().invoke(app, ["chart", str(CHART), "--lint"])
    assert ok.exit_code == 0, ok.output
    assert "no failures" in ok.output
    broken = tmp_path / "prfaas"
    shutil.copytree(CHART, broken)
    (broken / "templates" / "broken.yaml").write_text("{{ .Values.nope.deeper }}\n")
    bad = CliRunner().invoke(app, ["chart", str(broken), "--lint"])
    assert bad.exit_code == 1
    assert "[ERROR]" in bad.output


def test_install_steps_build_and_push_the_images_first() -> None:
    """The chart's default image is a placeholder: every install recipe builds, pushes and sets
    ``image.repository`` before ``helm install``, and the value says so where it is set."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    recipes = {
        "README.md": readme.split("## On a cluster", 1)[1].split("\n## ", 1)[0],
        "charts/prfaas/README.md": (CHART / "README.md").read_text(encoding="utf-8"),
    }
    for name, text in recipes.items():
        build, push, install = (text.index(s) for s in ("docker build", "docker push",
                                                        "helm install"))
        assert build < push < install, name
        assert "--set image.repository=" in text[install:], name
    values = (CHART / "values.yaml").read_text(encoding="utf-8")
    above_image = values.split("\nimage:", 1)[0]
    assert "docker push" in above_image and "image.repository" in above_image
