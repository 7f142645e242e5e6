# SPDX-License-Identifier: MIT
"""What the Python tests that start etcd members share: free loopback ports,
and children that die with the thread that started them."""

import ctypes
import signal
import socket


def free_ports(n):
    """n distinct free loopback ports (all bound at once, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def die_with_parent():
    """In the child before exec: SIGKILL when the thread that started it
    dies (PR_SET_PDEATHSIG)."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
