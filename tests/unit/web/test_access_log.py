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
