"""The bridge's error tree: what went wrong, for whom, and which exit code the CLI gives it.

Why one tree: every command used to catch its own exceptions, print them and call ``sys.exit``
with a hand-picked code, so the same failure could exit 1 in one command and 2 in another.  Now
modules raise a :class:`BridgeError` subclass and the one handler in bridge/cli.py prints the
message on stderr and exits with :attr:`BridgeError.exit_code`.

Exit codes (shared by every command; `sync` adds its run statuses 3-5, see bridge/sync/cli.py):

* 1 - :class:`UnavailableError`: something the command needs cannot be reached or is busy right now
  (directory, Keycloak, a sync target, a job another replica holds); retrying later may work.
* 2 - :class:`InputError`: bad input the operator must fix (configuration, policy file, key file,
  database URL, an unknown name); retrying as is will not help.

This module is stdlib-only and imports nothing from the bridge, so any module can raise from the
tree without import cycles.  Code that runs inside Orthanc (bridge/pacs, bridge/core/mfa.py) keeps
its own exceptions: the plugin must not depend on the rest of the bridge.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base of every error the bridge reports to an operator.

    ``subject`` is what the error names (a key path, user, file or URL), for callers that want it
    without parsing the message.  ``area`` (class attribute) is printed before the message by the
    CLI for errors whose message does not say where it comes from (``keys: ...``)."""

    exit_code: int = 2
    area: str | None = None

    def __init__(self, message: str = "", *, subject: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.subject = subject
        if exit_code is not None:
            self.exit_code = exit_code

    def cli_message(self) -> str:
        """The line(s) the CLI prints on stderr ("" prints nothing)."""
        text = str(self)
        return f"{self.area}: {text}" if self.area and text else text


class InputError(BridgeError):
    """Bad input the operator must fix: configuration, policy, key file, database URL, a name."""

    exit_code = 2


class UnavailableError(BridgeError):
    """Something the command needs cannot be reached or is busy now; retrying later may work."""

    exit_code = 1


class ExitStatus(BridgeError):
    """The command has printed its whole result; only a non-zero exit code is left to give
    (a sync run's status, a broken audit chain reported as JSON)."""

    def __init__(self, exit_code: int):
        super().__init__("", exit_code=exit_code)


# ---------------------------------------------------------------------------- protocol errors
def _quoted(value: str) -> str:
    """An RFC 9110 quoted-string: backslash and double quote escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def www_authenticate(
    scheme: str = "Bearer",
    *,
    realm: str | None = None,
    error: str | None = None,
    error_description: str | None = None,
    scope: str | None = None,
    acr_values: str | None = None,
    max_age: int | str | None = None,
) -> str:
    """The one ``WWW-Authenticate`` builder: RFC 6750 section 3 (realm, error, error_description,
    scope) and RFC 9470 section 3 (acr_values, max_age), every value a quoted string, in this
    order, parameters left out when None.  RFC 6750 3.1: leave ``error`` out when the request
    carried no credentials at all.  Stdlib-only, so token, web and CLI code share it."""
    params = {"realm": realm, "error": error, "error_description": error_description, "scope": scope,
              "acr_values": acr_values, "max_age": None if max_age is None else str(max_age)}
    parts = [f"{k}={_quoted(v)}" for k, v in params.items() if v is not None]
    return scheme + (" " + ", ".join(parts) if parts else "")
