"""Where `tunewise serve` listens, and starting uvicorn.

The UI can start runs from any task file the server can read, so it must not be reachable
from the network by accident: it binds to 127.0.0.1 unless ``--host`` names another address
on the command line. An environment variable alone (``TUNEWISE_HOST``) may pick another
loopback address but never opens the server to the network.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path

from tunewise.errors import TunewiseError

DEFAULT_HOST = "127.0.0.1"
HOST_ENV = "TUNEWISE_HOST"


def is_loopback(host: str) -> bool:
    """True for localhost and loopback IPs (127.0.0.0/8, ::1); hostnames are not trusted."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_host(cli_host: str | None, env: Mapping[str, str]) -> tuple[str, str | None]:
    """The address to bind and an optional warning to print.

    Args:
        cli_host: ``--host`` as typed, or None when not given.
        env: the environment (``TUNEWISE_HOST`` is read from it).

    Raises:
        TunewiseError: the environment asks for a non-loopback address without ``--host``.
    """
    if cli_host is not None:
        if not cli_host.strip():
            raise TunewiseError("--host is empty; give an address such as 127.0.0.1")
        if is_loopback(cli_host):
            return cli_host, None
        return cli_host, (f"serving on {cli_host}, which is not a loopback address: anyone who "
                          "can reach this machine can see your runs and start new ones")
    wanted = env.get(HOST_ENV, "").strip()
    if not wanted:
        return DEFAULT_HOST, None
    if not is_loopback(wanted):
        raise TunewiseError(f"{HOST_ENV}={wanted} asks for a non-loopback address; tunewise "
                            "serve only binds beyond 127.0.0.1 when --host is given explicitly "
                            f"(tunewise serve --host {wanted})")
    return wanted, None


def make_server(host: str, port: int, store: str | Path | None):
    """A configured ``uvicorn.Server`` for the app (tests run it in a thread)."""
    import uvicorn

    from tunewise.web.app import create_app

    hosts = ["127.0.0.1", "localhost", "::1", "[::1]", host] if is_loopback(host) else None
    config = uvicorn.Config(create_app(store, allowed_hosts=hosts), host=host, port=port,
                            log_level="warning", access_log=False)
    return uvicorn.Server(config)


def check_port(host: str, port: int) -> None:
    """Refuse a port out of range, or one another program listens on, in one line.

    uvicorn would log a traceback (out of range) or an ERROR line and exit 3 (in use); bind
    once here, with the SO_REUSEADDR uvicorn also sets, so the user sees why and what to do.
    """
    import socket

    if not 1 <= port <= 65535:
        raise TunewiseError(f"port {port} is out of range (1-65535)", field="--port")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise TunewiseError(f"cannot resolve host '{host}' ({exc})", field="--host") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise TunewiseError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
                                "stop the program using it or pick another --port",
                                field="--port") from None


def run_server(host: str, port: int, store: str | Path | None) -> None:
    """Serve until interrupted."""
    check_port(host, port)
    try:
        server = make_server(host, port, store)
        server.run()
    except OSError as exc:
        raise TunewiseError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    except SystemExit as exc:  # uvicorn's own startup failure (port taken in between)
        if exc.code not in (0, None):
            raise TunewiseError(f"cannot listen on {host}:{port} (see the line above)",
                                field="--port") from None
        raise
