"""The MFA rule and the RFC 9470 challenge."""

from __future__ import annotations

import pytest

from bridge.core.mfa import MfaRule, check
from bridge.tokens.service import step_up_challenge

NOW = 1_800_000_000.0
RULE = MfaRule(required_acr="mfa", accepted_amr=frozenset({"otp", "hwk"}), max_auth_age_seconds=600)


@pytest.mark.parametrize(
    ("claims", "ok"),
    [
        ({"acr": "mfa", "auth_time": NOW - 10}, True),
        ({"acr": "1", "amr": ["pwd", "otp"], "auth_time": NOW - 10}, True),
        ({"amr": ["hwk"], "auth_time": NOW}, True),
        ({"acr": "1", "amr": ["pwd"], "auth_time": NOW - 10}, False),
        ({"acr": "mfa"}, False),  # no auth_time
        ({"acr": "mfa", "auth_time": NOW - 700}, False),  # too old
        ({"acr": "mfa", "auth_time": NOW + 300}, False),  # future
        ({"acr": "mfa", "auth_time": True}, False),
        ({"amr": "otp", "auth_time": NOW}, True),
    ],
)
def test_rule(claims: dict, ok: bool) -> None:
    verdict = check(claims, RULE, NOW)
    assert verdict.ok is ok, verdict.reason
    assert verdict.reason


def test_amr_only_rule_ignores_acr() -> None:
    rule = MfaRule(required_acr=None, accepted_amr=frozenset({"otp"}))
    assert not check({"acr": "mfa", "auth_time": NOW}, rule, NOW).ok


def test_rule_that_can_never_pass_is_refused() -> None:
    with pytest.raises(ValueError, match="mfa"):
        MfaRule(required_acr=None, accepted_amr=frozenset())


def test_challenge_is_rfc9470() -> None:
    value = step_up_challenge(RULE)
    assert value.startswith("Bearer ")
    assert 'error="insufficient_user_authentication"' in value
    assert 'acr_values="mfa"' in value and 'max_age="600"' in value
