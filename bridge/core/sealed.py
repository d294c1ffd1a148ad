"""Small files and journal lines sealed in the envelope format of the encrypted image store
(:mod:`bridge.core.envelope`): the audit spools, the audit archives, the crash journal.

Why the same format: one AES-256-GCM construction, one header with the KEK's id, one rotation
story (re-wrap the data key, leave the body) for everything patient-identifying the bridge and
the plugin keep on disk.  Each kind of file has its own content type (outside Orthanc's attachment
range), so a spool file cannot be opened as an archive, nor either as an image.

Two shapes:

- a blob: ``header || ciphertext || tag`` (a spool file, an archive);
- a line: ``E1:`` + base64 of a blob, for files appended to line by line (a crash journal, the
  plugin's audit spool), so an append stays one ``write`` and a torn last line is just dropped.

A blob or line that is not sealed is returned as it is by the readers that say so
(``plaintext_ok``): files written before encryption was switched on are still read, and the next
rewrite seals them.

Stdlib + ``cryptography`` only (the plugin uses it inside Orthanc).
"""

from __future__ import annotations

import base64
import binascii

from bridge.core.envelope import EnvelopeError, KeyProvider, is_envelope, open_body, parse_header, seal

#: content types of the bridge's own sealed files (Orthanc's attachment types stay below 0x8000)
SYSLOG_SPOOL = 0xA001
AUDIT_ARCHIVE = 0xA002
PLUGIN_AUDIT_SPOOL = 0xA003
TOKEN_JOURNAL = 0xA004
LINE_PREFIX = b"E1:"


def seal_blob(keys: KeyProvider, name: str, content_type: int, data: bytes) -> bytes:
    """``data`` sealed under a fresh data key, bound to ``name`` and ``content_type``."""
    header, body = seal(keys, name, content_type, data)
    return b"".join((header, body))


def open_blob(keys: KeyProvider, name: str, content_type: int, blob: bytes, *, plaintext_ok: bool = False) -> bytes:
    """The plaintext of a sealed blob; raises :class:`EnvelopeError` if it was altered, moved to
    another name or kind, or (unless ``plaintext_ok``) is not sealed at all."""
    if not is_envelope(blob[:4]):
        if plaintext_ok:
            return blob
        raise EnvelopeError("not-encrypted", f"{name}: not sealed")
    header = parse_header(blob)
    return open_body(keys, header, name, content_type, memoryview(blob)[header.length:])


def is_sealed(blob: bytes) -> bool:
    return is_envelope(blob[:4])


def seal_line(keys: KeyProvider, name: str, content_type: int, line: bytes) -> bytes:
    """One line (without its newline) sealed, as ``E1:<base64>`` (no newline added)."""
    return LINE_PREFIX + base64.b64encode(seal_blob(keys, name, content_type, line))


def open_line(keys: KeyProvider, name: str, content_type: int, line: bytes, *, plaintext_ok: bool = False) -> bytes:
    """The plaintext of one sealed line (``plaintext_ok``: an unsealed line is returned as it is)."""
    if not line.startswith(LINE_PREFIX):
        if plaintext_ok:
            return line
        raise EnvelopeError("not-encrypted", f"{name}: a line is not sealed")
    try:
        blob = base64.b64decode(line[len(LINE_PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeError("damaged", f"{name}: a sealed line is not base64") from None
    return open_blob(keys, name, content_type, blob)
