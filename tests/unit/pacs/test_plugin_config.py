

def test_generated_plugin_settings_carry_the_bridges_mfa_rule(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The PACS applies the same MFA rule as /token: a changed `mfa` section reaches the plugin."""
    from bridge.config import load_config
    from bridge.pacs import plugin_config
    from bridge.pacs.orthanc_config import plugin_settings

    mfa = load_config(None, mfa={"required_acr": "gold", "accepted_amr": ["hwk"], "max_auth_age_seconds": 600}).mfa
    data = plugin_settings(issuer="https://bridge.test", audience="pacs", ca_file=None, spool_dir=tmp_path,
                           orthanc_log_file=None, pacs_name="orthanc", mfa=mfa)
    cfg = plugin_config.build(data, "test")
    assert (cfg.mfa_required_acr, tuple(cfg.mfa_accepted_amr), cfg.mfa_max_auth_age_seconds) == ("gold", ("hwk",), 600)
