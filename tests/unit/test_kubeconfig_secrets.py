"""Kubeconfig Secrets are tenant input: only inline credentials are accepted (no command runs,
no file of the operator's is read), and what is refused says why without quoting the Secret."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml
from prfaas.operator.api import models as api
from prfaas.operator.controller.clients import (
    ClientPool,
    ClusterClient,
    KubeconfigRefused,
    _client_from_kubeconfig,
)


def _config(user: dict[str, Any], cluster: dict[str, Any] | None = None) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "c", "cluster": cluster or {"server": "https://10.0.0.1"}}],
            "users": [{"name": "u", "user": user}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }
    )


def test_inline_token_is_accepted() -> None:
    client = _client_from_kubeconfig("dc", _config({"token": "abc"}))
    assert client.server == "https://10.0.0.1"
    assert client.headers["Authorization"] == "Bearer abc"


def test_exec_plugin_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1",
            "command": "touch",
            "args": [str(marker)],
        }
    }
    with pytest.raises(KubeconfigRefused, match="'exec', which runs a command"):
        _client_from_kubeconfig("dc", _config(user))
    assert not marker.exists()


@pytest.mark.parametrize(
    ("user", "cluster", "key"),
    [
        ({"tokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token"}, None, "tokenFile"),
        ({"auth-provider": {"name": "oidc"}}, None, "auth-provider"),
        ({"client-certificate": "/etc/x.crt", "client-key": "/etc/x.key"}, None, "client-"),
        ({"username": "a", "password": "b"}, None, "(username|password)"),
        (
            {"token": "t"},
            {"server": "https://a", "certificate-authority": "/etc/ca.crt"},
            "certificate-authority",
        ),
        ({"token": "t"}, {"server": "https://a", "proxy-url": "http://evil"}, "proxy-url"),
    ],
)
def test_file_paths_and_plugins_are_refused(
    user: dict[str, Any], cluster: dict[str, Any] | None, key: str
) -> None:
    with pytest.raises(KubeconfigRefused, match=f"sets '{key}") as err:
        _client_from_kubeconfig("dc", _config(user, cluster))
    assert "inline credentials" in str(err.value)
    assert err.value.reason == "KubeconfigRefused"


def test_any_entry_is_checked_not_only_the_current_context() -> None:
    doc = yaml.safe_load(_config({"token": "t"}))
    doc["users"].append({"name": "other", "user": {"exec": {"command": "sh"}}})
    with pytest.raises(KubeconfigRefused, match=r"users\[1\]"):
        _client_from_kubeconfig("dc", yaml.safe_dump(doc))


def test_a_non_http_server_is_refused() -> None:
    with pytest.raises(KubeconfigRefused, match="server must be an http"):
        _client_from_kubeconfig("dc", _config({"token": "t"}, {"server": "file:///etc/passwd"}))


def test_yaml_errors_do_not_quote_the_secret() -> None:
    text = "users:\n- user:\n    token: s3cr3t-token: [unclosed\n"
    with pytest.raises(KubeconfigRefused) as err:
        _client_from_kubeconfig("dc", text)
    assert "s3cr3t" not in str(err.value)
    assert "not valid YAML at line" in str(err.value)


def _secret_server(secret: dict[str, Any]) -> ClusterClient:
    """A local client whose only object is one Secret."""

    class SecretServer(ClusterClient):
        async def get(self, kind: Any, namespace: str | None, name: str) -> dict[str, Any] | None:
            return secret

    return SecretServer(name="local", server="http://127.0.0.1:9")


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (base64.b64encode(b"\xff\xfe kubeconfig").decode(), "not base64 of UTF-8"),
        ("%%% not base64 %%%", "not base64 of UTF-8"),
    ],
)
async def test_non_utf8_or_non_base64_secrets_give_a_reason(data: str, why: str) -> None:
    pool = ClientPool(_secret_server({"data": {"kubeconfig": data}}), namespace="ops")
    target = api.Target.model_validate({"kubeconfigSecretRef": {"name": "dc-a"}})
    with pytest.raises(KubeconfigRefused, match=why):
        await pool.client_for("dc-a", target)
