"""Free loopback ports, so no test ever depends on a fixed port."""

import socket


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that was free on `host` a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def free_udp_port(host: str = "127.0.0.1") -> int:
    """Return a UDP port that was free on `host` a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port
