"""A throwaway PostgreSQL server for the tests: Debian's binaries (``apt-get install
postgresql``), a cluster in a temporary folder, reached through a Unix socket only (no
port to collide with), stopped at the end of the session."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

USER = "scenemtl"


def server_binaries() -> Path | None:
    """The folder with initdb and pg_ctl, or None."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(versions[-1]).parent if versions else None


def _as_server_user(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root; as root, run it as Debian's ``postgres`` user."""
    if os.geteuid() != 0:
        return argv
    return ["runuser", "-u", "postgres", "--", *argv]


def why_no_server() -> str | None:
    """Why a server cannot be started here, or None."""
    if server_binaries() is None:
        return "no PostgreSQL server binaries (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
        if shutil.which("runuser") is None:
            return "running as root without runuser to drop to the 'postgres' user"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'scenemtl[postgres]')"
    return None


@contextmanager
def postgres_server(folder: Path) -> Iterator[str]:
    """Start a server with its cluster in ``folder``; yields a URL template
    ``postgresql://scenemtl@/{db}?host=SOCKET_DIR`` (``{db}``: a database name)."""
    bin_dir = server_binaries()
    assert bin_dir is not None
    folder.mkdir(parents=True, exist_ok=True)
    data, sockets = folder / "data", folder / "sockets"
    sockets.mkdir()
    if os.geteuid() == 0:
        os.chmod(folder, 0o755)
        shutil.chown(folder, "postgres")
        shutil.chown(sockets, "postgres")

    def run(*argv: str) -> subprocess.CompletedProcess:
        command = _as_server_user([str(bin_dir / argv[0]), *argv[1:]])
        return subprocess.run(command, capture_output=True, text=True, check=True, timeout=120)

    run("initdb", "-D", str(data), "-A", "trust", "-U", USER, "--no-sync")
    options = f"-k {sockets} -c listen_addresses='' -c fsync=off -c max_connections=50"
    run("pg_ctl", "-D", str(data), "-o", options, "-w", "-l", str(folder / "log"), "start")
    try:
        yield f"postgresql://{USER}@/{{db}}?host={sockets}"
    finally:
        run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")


def create_database(url_template: str, name: str) -> str:
    """A new empty database on the server; its URL."""
    import psycopg

    sockets = url_template.rsplit("host=", 1)[1]
    with psycopg.connect(host=sockets, user=USER, dbname="postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url_template.format(db=name)
