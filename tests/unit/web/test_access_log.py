"""The access log never shows an external share's link (one of its two factors)."""

from __future__ import annotations

import secrets

from bridge.web.access_log import redact


def test_a_share_link_is_redacted_in_any_position() -> None:
    link = secrets.token_urlsafe(32)
    assert redact(f"/share/{link}") == "/share/[redacted]"
    assert redact(f"/share/{link}/") == "/share/[redacted]/"
    assert redact(f"/other-prefix/{link}") == "/other-prefix/[redacted]"
    assert link not in redact(f"/share/{link}")


def test_ordinary_paths_stay_readable() -> None:
    orthanc_id = "6b9e19d9-62094390-5f9ddb01-4a191ae7-9766b715"
    for path in ("/pacs/studies/" + orthanc_id, "/share/s/study.zip", "/token", "/pacs/app/explorer.html",
                 "/dicom-web/studies/1.2.840.113619.2.55.3.604688119.969.1268071029.320"):
        assert redact(path) == path


def test_gunicorn_uses_the_redacting_logger() -> None:
    from bridge.web import gunicorn_conf

    assert gunicorn_conf.logger_class == "bridge.web.access_log.RedactingLogger"


def test_the_access_line_gets_every_atom_it_uses_and_no_query_or_secret() -> None:
    """The logger builds only the atoms of the bridge's line: each one the line uses must be there."""
    import datetime as dt
    import re
    from types import SimpleNamespace

    from gunicorn.config import Config
    from gunicorn.glogging import SafeAtoms

    from bridge.deploy.gunicorn import ACCESS_LOG_FORMAT
    from bridge.web.access_log import RedactingLogger

    link = secrets.token_urlsafe(32)
    environ = {"REMOTE_ADDR": "10.0.0.7", "REQUEST_METHOD": "GET", "PATH_INFO": f"/share/{link}",
               "QUERY_STRING": "code=secret", "HTTP_X_FORWARDED_FOR": "10.9.9.9",
               "RAW_URI": f"/share/{link}?code=secret"}
    req = SimpleNamespace(headers=[("X-FORWARDED-FOR", "6.6.6.6"), ("X-FORWARDED-FOR", "10.9.9.9")])  # proxy's last
    atoms = RedactingLogger(Config()).atoms(SimpleNamespace(status="200 OK", headers=[]), req, environ,
                                            dt.timedelta(milliseconds=12))
    used = re.findall(r"%\((\{[^}]+\}[ioe]|[a-zA-Z])\)s", ACCESS_LOG_FORMAT)
    assert used and all(name in atoms for name in used), (used, sorted(atoms))
    line = ACCESS_LOG_FORMAT % SafeAtoms(atoms)
    assert line == f'10.0.0.7 <{__import__("os").getpid()}> "GET /share/[redacted]" 200 12ms xff=10.9.9.9'
    assert link not in line and "secret" not in line


def test_a_link_followed_by_punctuation_is_still_redacted_and_no_line_is_forged() -> None:
    link = secrets.token_urlsafe(32)
    for tail in (".", ";", ".zip", ",x", "%20"):
        assert link not in redact(f"/share/{link}{tail}"), tail
    line = redact("/pacs/x\n10.0.0.1 <1> \"GET /forged\" 200 1ms")
    assert "\n" not in line and "\\x0a" in line
