"""A real PostgreSQL server for the log's tests: initdb into a fresh folder, started on a free loopback port,
stopped at the end. Debian's `postgresql` package provides the binaries; initdb and the server run as the
`postgres` user when the tests run as root (they refuse root). In CI (TIERGATE_REQUIRE_SERVICES=1) a missing
server fails the tests instead of skipping them."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import free_port  # noqa: E402 - imported by tests/conftest.py after it defines it


def _pg_bin() -> Path | None:
    """The folder with initdb, pg_ctl and createdb: Debian keeps them together under /usr/lib/postgresql/N/bin
    (on PATH there are only wrappers); elsewhere, wherever initdb is on PATH."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if versions:
        return versions[-1].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="session")
def postgres_url():
    bin_dir = _pg_bin()
    try:
        import psycopg  # noqa: F401
    except ImportError:
        bin_dir = None
    if bin_dir is None:
        if os.environ.get("TIERGATE_REQUIRE_SERVICES"):
            pytest.fail("PostgreSQL (Debian's postgresql) or psycopg is missing, and TIERGATE_REQUIRE_SERVICES says "
                        "they must be there (.ci/run installs them)")
        pytest.skip("PostgreSQL's server binaries or psycopg are not installed")
    root = Path(tempfile.mkdtemp(prefix="tiergate-pg-"))
    root.chmod(0o755)
    data, sock = root / "data", root / "sock"
    data.mkdir()
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
        shutil.chown(sock, "postgres", "postgres")
    port = free_port()
    run = lambda *cmd: subprocess.run(_as_postgres([str(bin_dir / cmd[0]), *cmd[1:]]), check=True,  # noqa: E731
                                      capture_output=True, text=True, timeout=120)
    run("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    run("pg_ctl", "-D", str(data), "-l", str(sock / "server.log"), "-w", "-t", "60", "-o",
        f"-c listen_addresses=127.0.0.1 -p {port} -k {sock} -c fsync=on", "start")
    try:
        deadline = time.time() + 30
        while True:
            r = subprocess.run(_as_postgres([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U",
                                             "postgres", "tiergate"]), capture_output=True, text=True)
            if r.returncode == 0 or time.time() > deadline:
                assert r.returncode == 0, r.stderr
                break
            time.sleep(0.3)
        yield f"postgresql://postgres@127.0.0.1:{port}/tiergate"
    finally:
        subprocess.run(_as_postgres([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def fresh_postgres(postgres_url):
    """The server's database emptied of tiergate's tables, for a test that starts from nothing."""
    import psycopg

    with psycopg.connect(postgres_url, autocommit=True) as c:
        for t in ("feedback_rejected", "feedback", "decisions", "versions", "tiergate_schema"):
            c.execute(f"DROP TABLE IF EXISTS {t} CASCADE")
    return postgres_url
