"""Operator settings from the environment, and the CLI's refusal of bad values."""

from __future__ import annotations

import pytest
from prfaas.operator.cli.app import app
from prfaas.operator.controller.settings import OperatorSettings, parse_apply_mode
from typer.testing import CliRunner


def test_settings_from_env_override_defaults_only_where_set() -> None:
    s = OperatorSettings.from_env(
        {
            "PRFAAS_RESYNC_SECONDS": "5",
            "PRFAAS_APPLY_MODE": "merge",
            "POD_NAMESPACE": "ops",
            "PRFAAS_METRICS_PORT": "0",
        }
    )
    assert s.reconcile.resync_seconds == 5.0 and s.reconcile.apply_mode == "merge"
    assert s.reconcile.namespace == "ops" and s.metrics_port == 0
    d = OperatorSettings.from_env({})
    assert d.reconcile.apply_mode == "server-side" and d.reconcile.resync_seconds == 30.0


def test_bad_apply_mode_names_the_choices() -> None:
    with pytest.raises(ValueError, match="server-side or merge"):
        parse_apply_mode("replace")
    result = CliRunner().invoke(app, ["operator", "--apply", "replace"])
    assert result.exit_code == 2
    assert "server-side or merge" in result.output
