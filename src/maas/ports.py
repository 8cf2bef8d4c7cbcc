"""Free loopback ports, for the processes maas starts: training tasks and servers."""

from __future__ import annotations

import socket


def free_ports(count: int) -> list[int]:
    """Ports that are free on the loopback interface now (all held open until all chosen,
    so they differ). Another process may take one before it is used: callers that start a
    server on it treat a failed start as an error, not as this function's."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port() -> int:
    """One free loopback port (see :func:`free_ports`)."""
    return free_ports(1)[0]
