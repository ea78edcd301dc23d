"""A free loopback port for a server a test (or a benchmark) starts: PostgreSQL, optuna-dashboard,
``tuner serve``."""
from __future__ import annotations

import random
import socket


def free_port() -> int:
    """A free port between Ray's worker ports (10002-19999) and the OS's ephemeral range (from 32768),
    where every port Ray's own processes take at start-up (bound to port 0) comes from: one picked
    there (as the OS would pick) can be taken before the server binds it ("Failed to bind", seen
    once in README command 2)."""
    for port in random.sample(range(20000, 32768), 500):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32767")
