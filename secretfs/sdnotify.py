"""The service manager's readiness protocol (sd_notify), without libsystemd.

systemd (and anything that speaks the protocol) puts a datagram socket's address in
`$NOTIFY_SOCKET`; a `Type=notify` service sends newline-separated `KEY=VALUE` lines
to it: `READY=1` once it serves, `STOPPING=1` when it begins to shut down, `STATUS=`
free text for `systemctl status`. An address starting with `@` is in the abstract
namespace. The kernel attaches the sender's pid, which systemd checks against the
main process (`NotifyAccess=main`), so only the serving process may notify.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

ENV_NOTIFY_SOCKET = "NOTIFY_SOCKET"


class Notifier:
    """Sends state changes to the service manager; does nothing when there is none."""

    def __init__(self, address: str | None) -> None:
        self.address = address

    @classmethod
    def from_environ(cls) -> Notifier:
        """Take `$NOTIFY_SOCKET` out of the environment, so that no child inherits it."""
        address = os.environ.pop(ENV_NOTIFY_SOCKET, None) or None
        if address is not None and not address.startswith(("/", "@")):
            # systemd >= 254 also offers vsock:CID:PORT, used for whole VMs, not services.
            log.warning("ignoring $%s=%r: not a unix socket path", ENV_NOTIFY_SOCKET, address)
            address = None
        return cls(address)

    def notify(self, *assignments: str) -> bool:
        """Send `KEY=VALUE` assignments in one datagram; True if one was sent."""
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        message = "\n".join(a.replace("\n", " ") for a in assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(target)
                sock.sendall(message)
        except OSError as exc:
            log.error("cannot notify the service manager at %s: %s", self.address, exc)
            return False
        return True
