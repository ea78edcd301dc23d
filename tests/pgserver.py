"""A private PostgreSQL server for a test session (or a benchmark): its own data directory, a free
loopback port, stopped by its own PID.

Debian's ``postgresql`` package (``.ci/run`` installs it when missing) ships the server binaries in
``/usr/lib/postgresql/VERSION/bin``. The server never touches a system cluster: ``initdb`` makes a
fresh one in a temporary folder, it listens on 127.0.0.1 only (its Unix socket in that folder, not
``/var/run/postgresql``), and it is stopped by the PID its ``postmaster.pid`` names, never with
``pg_ctl stop`` on a shared data directory or by process name. PostgreSQL refuses to run as root, so
as root it runs as the ``postgres`` user the package creates.
"""
from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from ports import free_port

USER, PASSWORD, DATABASE = "tuner", "tuner-test", "optuna"


def binaries() -> Optional[Path]:
    """The folder holding ``initdb`` and ``postgres`` (the newest Debian version first), or None."""
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True):
        if Path(folder, "initdb").exists() and Path(folder, "postgres").exists():
            return Path(folder)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("postgres"):
        return Path(os.path.realpath(initdb)).parent
    return None


def cannot_run() -> Optional[str]:
    """Why a private server cannot be started here, or None when it can."""
    if binaries() is None:
        return "PostgreSQL server binaries (initdb, postgres) not found: apt-get install postgresql"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root without `runuser` (util-linux) to run the server as `postgres`"
    try:
        import sqlalchemy

        sqlalchemy.create_engine("postgresql://localhost/x")  # imports SQLAlchemy's default driver; no connection
    except ImportError:
        return "no PostgreSQL driver for SQLAlchemy (psycopg): pip install -e '.[postgres]'"
    return None


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextmanager
def postgres_server(timeout: float = 60.0, durable: bool = False) -> Iterator[str]:
    """Start a private PostgreSQL server; yield the SQLAlchemy URL of its empty ``optuna`` database.

    Args:
        timeout: seconds to wait for it to accept connections.
        durable: fsync commits as a real server does (a benchmark); off, a test's throwaway
            cluster skips the disk flushes.

    Raises:
        RuntimeError: the server did not start (its log's tail in the message).
    """
    import sqlalchemy

    bindir = binaries()
    assert bindir is not None, cannot_run()
    root = Path(tempfile.mkdtemp(prefix="tuner-pg-"))  # under /tmp, not pytest's root-only tmp folders
    data, log = root / "data", root / "server.log"
    (root / "pwfile").write_text(PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(root / "pwfile", "postgres", "postgres")
    proc = None
    try:
        subprocess.run(_as_server_user([str(bindir / "initdb"), "-D", str(data), "-U", USER, "-A", "scram-sha-256",
                                        f"--pwfile={root / 'pwfile'}", "-E", "UTF8", "--locale=C", "--no-sync"]),
                       check=True, capture_output=True, text=True)
        port = free_port()
        with open(log, "w") as out:
            if os.geteuid() == 0:
                shutil.chown(log, "postgres", "postgres")
            proc = subprocess.Popen(_as_server_user([
                str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(root),
                "-c", "listen_addresses=127.0.0.1", "-c", f"fsync={'on' if durable else 'off'}", "-c", "max_connections=200"]),
                stdout=out, stderr=subprocess.STDOUT)
        server = f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}"
        admin = sqlalchemy.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT",
                                         connect_args={"connect_timeout": 2})
        deadline = time.monotonic() + timeout
        while True:
            try:
                with admin.connect() as conn:
                    conn.execute(sqlalchemy.text(f"CREATE DATABASE {DATABASE}"))
                break
            except sqlalchemy.exc.OperationalError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"PostgreSQL did not start: {log.read_text()[-1500:]}") from None
                time.sleep(0.2)
        admin.dispose()
        yield f"{server}/{DATABASE}"
    finally:
        if proc is not None:
            _stop(data, proc)
        shutil.rmtree(root, ignore_errors=True)


def _stop(data: Path, proc: subprocess.Popen) -> None:
    """Fast shutdown (SIGINT) of the postmaster named by this data directory's postmaster.pid."""
    pid_file = data / "postmaster.pid"
    pid = int(pid_file.read_text().split("\n", 1)[0]) if pid_file.exists() else None
    if pid is not None:
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        if pid is not None:
            os.kill(pid, signal.SIGKILL)  # its own PID still: the backends exit with their postmaster
        proc.wait(timeout=10)
