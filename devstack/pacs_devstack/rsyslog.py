"""rsyslog as the dev stack's audit record repository: syslog over TLS (RFC 5425) on loopback.

The bridge ships its audit messages (RFC 5424 with an ATNA/BALP XML body) here; tests read
``received_file``, where each message is one line exactly as received (``%rawmsg%``: header,
MSGID, structured data and the XML body), control characters escaped (``#012`` for a newline)
as rsyslog does on reception.

- Transport: imtcp with the GnuTLS driver (``rsyslog-gnutls``), TLS only, octet-counted framing
  (RFC 6587 3.4.1, what RFC 5425 prescribes) accepted alongside LF framing.  The server presents
  a certificate from the dev CA; clients must verify it.  Mutual TLS (IHE ATNA secure node):
  rsyslog asks every client for a certificate and admits only one signed by the dev CA whose
  name is the bridge's syslog client name (``streamDriver.authMode="x509/name"`` with
  ``permittedPeer``; a valid dev-CA certificate of another name, a foreign CA's certificate, or
  none is refused and nothing the client sends is written).  ``wait_ready`` reports the client
  certificate and key (``client_cert_file`` / ``client_key_file``) for the bridge and the tests.
- Isolation: no imuxsock/imklog (the host's /dev/log and kernel log are untouched), its own work
  directory and pid file, and rsyslog's own messages go to ``internal.log`` instead of the
  host's syslog socket (``processInternalMessages``).
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from pathlib import Path
from typing import Any

from pacs_devstack import process, tls
from pacs_devstack.process import DevstackError
from pacs_devstack.service import Service, StackContext
from pacs_devstack.state import free_port

BINARY = Path("/usr/sbin/rsyslogd")
GTLS_DRIVER = Path("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so")
MAX_MESSAGE = "256k"  # audit XML bodies run to several KiB; rsyslog's default 8k would truncate them


class RsyslogService(Service):
    name = "rsyslog"
    apt_packages = ("rsyslog", "rsyslog-gnutls")

    @property
    def config_file(self) -> Path:
        return self.dir / "rsyslog.conf"

    @property
    def received_file(self) -> Path:
        return self.dir / "received.log"

    def _port(self) -> int:
        try:
            return int((self.dir / "port").read_text())
        except (OSError, ValueError) as exc:
            raise DevstackError(f"rsyslog: cannot read the port from {self.dir / 'port'}: {exc}") from None

    def prepare(self, ctx: StackContext) -> None:
        if not BINARY.exists():
            raise DevstackError(f"rsyslog: {BINARY} is missing (apt package rsyslog)")
        if not GTLS_DRIVER.exists() and not list(Path("/usr/lib").glob("*/rsyslog/lmnsd_gtls.so")):
            raise DevstackError("rsyslog: the GnuTLS stream driver lmnsd_gtls.so is missing "
                                "(apt package rsyslog-gnutls)")
        port = free_port()
        (self.dir / "port").write_text(str(port))
        work = self.dir / "work"
        work.mkdir(mode=0o700, exist_ok=True)
        pair = tls.issue("rsyslog")
        tls.issue_client("bridge-syslog-client", tls.BRIDGE_SYSLOG_CLIENT)
        self.config_file.write_text(f"""\
# written by devstack/pacs_devstack/rsyslog.py
global(
  workDirectory="{work}"
  maxMessageSize="{MAX_MESSAGE}"
  net.enableDNS="off"
  processInternalMessages="on"
  defaultNetstreamDriver="gtls"
  defaultNetstreamDriverCAFile="{pair.ca}"
  defaultNetstreamDriverCertFile="{pair.cert}"
  defaultNetstreamDriverKeyFile="{pair.key}"
)
# mutual TLS: a client certificate from the dev CA, for client use, naming the bridge's syslog client
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1" streamDriver.authMode="x509/name"
       streamDriver.CheckExtendedKeyPurpose="on" streamDriver.PrioritizeSAN="on"
       permittedPeer=["{tls.BRIDGE_SYSLOG_CLIENT}"])
template(name="received" type="string" string="%rawmsg%\\n")
ruleset(name="audit") {{
  action(type="omfile" file="{self.received_file}" template="received" fileCreateMode="0600")
}}
input(type="imtcp" address="127.0.0.1" port="{port}" ruleset="audit")
# the default ruleset sees only rsyslog's own messages
action(type="omfile" file="{self.dir / 'internal.log'}" fileCreateMode="0600")
""", encoding="utf-8")
        process.run([str(BINARY), "-N1", "-f", str(self.config_file)],
                    what=f"rsyslog: configuration check of {self.config_file}")

    def start(self, ctx: StackContext) -> None:
        self.received_file.touch(mode=0o600)
        process.start(self.name, [str(BINARY), "-n", "-f", str(self.config_file),
                                  "-i", str(self.dir / "rsyslogd.pid")], cwd=self.dir)

    def wait_ready(self, ctx: StackContext) -> dict[str, Any]:
        port = self._port()
        client = tls.issue_client("bridge-syslog-client", tls.BRIDGE_SYSLOG_CLIENT)
        context = ssl.create_default_context(cafile=str(ctx.ca_file))
        context.load_cert_chain(str(client.cert), str(client.key))

        def ready() -> bool:
            # a completed, verified TLS handshake: the listener is up with the right certificate;
            # closed with close_notify so rsyslog logs no "non-properly terminated" error
            # (sent without waiting for rsyslog's own close_notify, which it does not send back)
            with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
                conn = context.wrap_socket(raw, server_hostname="localhost")
                conn.setblocking(False)
                with contextlib.suppress(ssl.SSLWantReadError):
                    conn.unwrap()
                return True

        process.wait_until(ready, what="rsyslog", timeout=30, rec=process.load(self.name), interval=0.1)
        return {"host": "127.0.0.1", "port": port, "received_file": str(self.received_file),
                "ca_file": str(ctx.ca_file), "client_cert_file": str(client.cert),
                "client_key_file": str(client.key), "client_name": tls.BRIDGE_SYSLOG_CLIENT}


SERVICE = RsyslogService()
