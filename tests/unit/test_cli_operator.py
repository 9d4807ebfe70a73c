"""``prfaas operator`` started where no Kubernetes API server can be found."""

from __future__ import annotations

import kubernetes
import pytest
from prfaas.operator.cli.app import app
from typer.testing import CliRunner


def test_no_kubeconfig_is_one_clear_line_and_exit_1(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_kubeconfig(*args: object, **kwargs: object) -> None:
        raise kubernetes.config.ConfigException(
            "Invalid kube-config file. No configuration found."
        )

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a pod
    monkeypatch.setattr(kubernetes.config, "load_kube_config", no_kubeconfig)
    result = CliRunner().invoke(app, ["operator", "--metrics-port", "0", "--liveness-port", "0"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("prfaas operator: no Kubernetes API server to talk to")
    assert "KUBECONFIG" in lines[0] and "--server" in lines[0]
    assert "Traceback" not in result.output
