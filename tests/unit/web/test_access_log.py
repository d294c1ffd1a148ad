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


def _granian_line(environ: dict, status: int = 200) -> str:
    """The access line granian writes for ``environ``, through the bridge's logging config (its real
    access-log builder and its own merge of the config, so a granian change that breaks the filter
    fails here)."""
    import io
    import logging

    from granian.log import configure_logging
    from granian.wsgi import _build_access_logger

    from bridge.deploy.web_server import ACCESS_LOG_FORMAT, log_config

    configure_logging("info", log_config())
    handler = logging.getLogger("granian.access").handlers[0]
    out = io.StringIO()
    handler.setStream(out)  # type: ignore[attr-defined]
    _build_access_logger(ACCESS_LOG_FORMAT)(0.0, 0.0, environ, status)
    return out.getvalue()


def _environ(path: str, **extra: str) -> dict:
    return {"REMOTE_ADDR": "10.0.0.7", "REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": "code=secret",
            "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "https", **extra}


def test_the_access_line_has_no_query_or_secret_and_the_nearest_hop() -> None:
    import os

    link = secrets.token_urlsafe(32)
    # granian joins the lines of a repeated header with commas; HAProxy's line is the last
    line = _granian_line(_environ(f"/share/{link}", HTTP_X_FORWARDED_FOR="6.6.6.6,10.9.9.9"))
    assert line.startswith(f'10.0.0.7 <{os.getpid()}> "GET /share/[redacted]" 200 '), line
    assert line.rstrip().endswith("xff=10.9.9.9"), line
    assert link not in line and "secret" not in line


def test_an_access_line_cannot_be_forged_through_a_header_or_the_path() -> None:
    line = _granian_line(_environ("/pacs/x\n10.0.0.1 <1> \"GET /forged\" 200 1ms",
                                  HTTP_X_FORWARDED_FOR="1.1.1.1,2.2.2.2\n10.0.0.1 forged"))
    assert line.count("\n") == 1 and line.count('"') == 2 and "%0A" in line, line
    assert line.rstrip().endswith("xff=2.2.2.2%0A10.0.0.1%20forged"), line
    assert _granian_line(_environ("/x")).rstrip().endswith("xff=-")


def test_a_link_followed_by_punctuation_is_still_redacted_and_no_line_is_forged() -> None:
    link = secrets.token_urlsafe(32)
    for tail in (".", ";", ".zip", ",x", "%20"):
        assert link not in redact(f"/share/{link}{tail}"), tail
    line = redact("/pacs/x\n10.0.0.1 <1> \"GET /forged\" 200 1ms")
    assert "\n" not in line and '"' not in line and " " not in line and "%0A" in line
    assert redact("/pacs/\x85\x9b[31m") == "/pacs/%85%9B%5B31m"  # C1 controls (NEL, CSI) too


def test_a_percent_encoded_link_is_redacted_too() -> None:
    """The server decodes the path before the log sees it; the link is matched after re-encoding."""
    link = secrets.token_urlsafe(32)
    assert redact(f"/share/{link}") == "/share/[redacted]"
    assert redact(f"/share/{link}\u00e9") == "/share/[redacted]%E9"
    assert redact("/pacs/a b\"c") == "/pacs/a%20b%22c"
