"""Addresses: what a host setting means for a URL, and whether this machine can listen there."""

from __future__ import annotations

import errno
import socket


class AddressError(ValueError):
    """A host that is not an address of this machine, or a port already taken: one line, naming the setting."""


def url_host(host: str) -> str:
    """Where a client reaches a server bound to `host`, as it goes in a URL: a wildcard address means
    this machine, and IPv6 addresses go in brackets."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


def check_bind(host: str, port: int = 0, what: str = "--host") -> None:
    """AddressError unless a server could listen on `host` (and, when `port` is given, on that port:
    nothing else listens there). Checked before anything slow starts."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise AddressError(f"{what} {host!r}: not an address of this machine ({e.strerror})") from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(
            socket.SOL_SOCKET, socket.SO_REUSEADDR, 1
        )  # as servers do: a closed connection's TIME_WAIT is no conflict
        try:
            s.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise AddressError(
                    f"{what} {host}:{port}: the port is already in use (choose another with --port)"
                ) from None
            raise AddressError(f"{what} {host!r}: cannot listen there ({e.strerror})") from None


def free_local_port() -> int:
    """A port nothing listens on at 127.0.0.1 now, for a server of limachat's own."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
