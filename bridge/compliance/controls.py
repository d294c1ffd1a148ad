"""The control map: which evidence stands behind each HIPAA and GDPR control.

A control lists evidence id prefixes (``tls`` covers every ``tls.<hop>``); the evidence ids are
those of :mod:`bridge.compliance.checks` and of the collectors other modules register (``review``,
``breakglass``).  A prefix with no evidence at all is itself missing evidence.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Control:
    id: str
    framework: str
    citation: str
    title: str
    evidence: tuple[str, ...]


CONTROLS: tuple[Control, ...] = (
    Control("hipaa-a1-unique-id", "HIPAA", "45 CFR 164.312(a)(2)(i)", "Access control: unique user identification",
            ("identity",)),
    Control("hipaa-a1-emergency", "HIPAA", "45 CFR 164.312(a)(2)(ii)", "Access control: emergency access procedure",
            ("breakglass",)),
    Control("hipaa-a1-logoff", "HIPAA", "45 CFR 164.312(a)(2)(iii)", "Access control: automatic logoff",
            ("logoff",)),
    Control("hipaa-a1-encryption", "HIPAA", "45 CFR 164.312(a)(2)(iv)", "Access control: encryption and decryption",
            ("keys", "storage")),
    Control("hipaa-b-audit", "HIPAA", "45 CFR 164.312(b)", "Audit controls",
            ("audit.chain", "audit.retention", "audit.archive", "review")),
    Control("hipaa-c1-integrity", "HIPAA", "45 CFR 164.312(c)(1)", "Integrity",
            ("audit.chain", "audit.archive")),
    Control("hipaa-d-authentication", "HIPAA", "45 CFR 164.312(d)", "Person or entity authentication",
            ("mfa.rule", "mfa.accounts")),
    Control("hipaa-e1-transmission", "HIPAA", "45 CFR 164.312(e)(1)", "Transmission security",
            ("config.plaintext", "tls")),
    Control("gdpr-32-1a", "GDPR", "Art. 32(1)(a)", "Pseudonymisation and encryption of personal data",
            ("keys", "storage", "tls", "config.plaintext")),
    Control("gdpr-32-1b", "GDPR", "Art. 32(1)(b)",
            "Ongoing confidentiality, integrity, availability and resilience",
            ("identity", "mfa.accounts", "audit.chain", "review", "backups")),
    Control("gdpr-32-1c", "GDPR", "Art. 32(1)(c)", "Restore availability and access in a timely manner",
            ("backups",)),
    Control("gdpr-32-1d", "GDPR", "Art. 32(1)(d)", "Regularly testing, assessing and evaluating the measures",
            ("tests", "review")),
)


def matches(prefix: str, check: str) -> bool:
    return check == prefix or check.startswith(prefix + ".")
