"""The token format version: the bridge stamps it on every PACS token, the verifier (bridge and
Orthanc plugin alike) refuses a token whose format it does not understand, and says so in its log."""

from __future__ import annotations

import logging

import pytest
from pacs_bridge_double import FakeBridge

from bridge.core import token_format
from bridge.core.errors import VerificationError
from bridge.core.verifier import Verifier
from bridge.tokens import claims as claims_mod
from bridge.tokens.claims import Grant, Subject, TokenSettings


def test_issued_tokens_carry_the_current_format() -> None:
    body = claims_mod.build(TokenSettings(issuer="https://b.test", audience="pacs"), Subject(id="guid-1"),
                            Grant(), "viewer")
    assert body[token_format.CLAIM] == token_format.CURRENT


def test_configured_extra_claims_cannot_change_the_format() -> None:
    settings = TokenSettings(issuer="https://b.test", audience="pacs", extra={token_format.CLAIM: 99})
    body = claims_mod.build(settings, Subject(id="guid-1"), Grant(), "viewer")
    assert body[token_format.CLAIM] == token_format.CURRENT


def test_current_format_accepted(bridge: FakeBridge, verifier: Verifier) -> None:
    assert verifier.verify(bridge.token()).claims[token_format.CLAIM] == token_format.CURRENT


@pytest.mark.parametrize("value", [None, 0, 1, 3, 99, "2", 2.0, True, [2], {"v": 2}])
def test_unknown_or_missing_format_refused_and_logged(
    bridge: FakeBridge, verifier: Verifier, value: object, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger=token_format.LOGGER), \
            pytest.raises(VerificationError, match="token format"):
        verifier.verify(bridge.token(**{token_format.CLAIM: value}))
    assert any("token format" in r.getMessage() for r in caplog.records)


def test_refused_format_is_a_denial_of_the_request(bridge: FakeBridge, verifier: Verifier) -> None:
    d = verifier.authorize("Bearer " + bridge.token(**{token_format.CLAIM: 3}), "GET", "/studies/abc")
    assert not d.allow and "token format" in d.reason


def test_a_format_1_token_is_refused_and_logged(
    bridge: FakeBridge, verifier: Verifier, caplog: pytest.LogCaptureFixture
) -> None:
    """Format 1 merged every role's permissions and scopes (``permissions`` + ``scopes``); its claims
    must not be read by the grant rules, nor the grant-less token read as anything but refused."""
    old = bridge.claims(**{token_format.CLAIM: 1}, scopes=None)
    old.pop("grants")
    old["scopes"] = {"departments": [], "institutions": []}  # format 1: unscoped = every study
    with caplog.at_level(logging.WARNING, logger=token_format.LOGGER):
        d = verifier.authorize("Bearer " + bridge.ring.sign(old), "GET", "/studies/abc")
    assert not d.allow and d.reason == "token format 1 not understood"
    assert any("token format 1 not understood" in r.getMessage() for r in caplog.records)
