"""`pacs-bridge sync --plan --json`, `--apply`, `--history` and `policy explain` against Samba AD."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from sync_helpers import POLICY, directory_section, need

from bridge.cli import main
from bridge.kek import KeyEncryptor

pytestmark = pytest.mark.integration


def test_cli_plan_apply_history_explain(stack, ctx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    need(stack, "samba")
    d = directory_section(stack, ctx, "samba")
    cfg = tmp_path / "bridge.yaml"
    cfg.write_text(yaml.safe_dump({
        "directory": {"kind": "ad", "url": d.url, "bind_dn": d.bind_dn,
                      "bind_password": d.bind_password.get_secret_value(), "base_dn": d.base_dn,
                      "users_dn": d.users_dn, "groups_dn": d.groups_dn, "ca_file": str(d.ca_file)},
        "store": {"url": f"sqlite:///{tmp_path / 'b.db'}"},
        # the run's audit checkpoints are signed with a key kept encrypted under the KEK
        "tokens": {"key_encryption_key": KeyEncryptor.generate_secret()},
        "audit": {"checkpoint_key_file": str(tmp_path / "cp.key")},
        "sync": {"policy_file": str(POLICY), "targets": ["store"]}}))
    cli = CliRunner()
    plan = cli.invoke(main, ["sync", "-c", str(cfg), "--plan", "--json"])
    assert plan.exit_code == 0, plan.output
    body = json.loads(plan.output)
    assert body["status"] == "dry_run" and body["plan"]["counts"]["adds"] >= 50
    applied = cli.invoke(main, ["sync", "-c", str(cfg), "--apply", "--json"])
    assert applied.exit_code == 0 and json.loads(applied.output)["results"][0]["added"] >= 50
    again = cli.invoke(main, ["sync", "-c", str(cfg), "--plan", "--json"])
    assert json.loads(again.output)["plan"]["empty"] is True
    hist = cli.invoke(main, ["sync", "-c", str(cfg), "--history", "--json"])
    assert [r["status"] for r in json.loads(hist.output)][:3] == ["dry_run", "ok", "dry_run"]
    explain = cli.invoke(main, ["policy", "explain", "rad.bruno", "-c", str(cfg), "--json"])
    out = json.loads(explain.output)
    assert {"radiologist", "auditor"} <= set(out["roles"])
    assert out["conflicts"][0]["id"] == "reader-audits-self"
    assert any(g["rule"] == "compliance-auditors" for g in out["grants"])
    text = cli.invoke(main, ["policy", "explain", "rad.res.eli", "-c", str(cfg)])
    assert "via rule radiology-staff on group CN=Radiology,OU=Radiology" in text.output
