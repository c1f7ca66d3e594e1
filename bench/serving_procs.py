"""Servers for bench/serving.py as subprocesses on 127.0.0.1: start, wait until ready, measure, stop.

:class:`ServerProcess` runs one command (``tiergate serve`` or the bare endpoint) with its output in a log file,
waits for ``/readyz`` (or ``/healthz`` where there is no ``/readyz``), reads the process's RSS and CPU time
from /proc, and stops it with SIGTERM (uvicorn's graceful shutdown), then SIGKILL after a grace period. Only
the process it started is ever signalled.

:func:`config_variant` and :func:`copy_workdir` write the configs the scenarios need without touching the
user's: a variant is a copy of the YAML in a scratch folder with the tier paths made absolute (so it serves
the same model files); a workdir copy duplicates the whole folder (scenario f corrupts a model in it).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiergate_command(config: Path, port: int, log_level: str | None) -> list[str]:
    """``tiergate serve`` from this interpreter's environment (one uvicorn worker, the CLI's default)."""
    script = Path(sys.executable).parent / "tiergate"
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "tiergate.cli"]
    cmd += ["serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    return cmd + (["--log-level", log_level] if log_level else [])


def bare_command(port: int, log_level: str | None, rules: Path | None = None) -> list[str]:
    cmd = [sys.executable, str(ROOT / "bench" / "bare_endpoint.py"), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--rules", str(rules)] if rules else []
    return cmd + (["--log-level", log_level] if log_level else [])


class ServerError(RuntimeError):
    """A server did not start; the message carries the tail of its log."""


def _get(url: str, timeout: float = 5.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, urllib.error.URLError):
        return 0


def listens(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds a listening TCP socket on ``port``. Other sessions run servers on this
    machine too: a port picked free can be taken before our server binds it, and its /readyz must not be
    mistaken for ours."""
    inodes = set()
    for proc_net in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(proc_net).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(f[9])
    if not inodes:
        return False
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            return True
    return False


class ServerProcess:
    """One server subprocess. ``with ServerProcess(name, cmd, port, log) as s: ... s.url ...``"""

    def __init__(self, name: str, cmd: list[str], port: int, log_path: Path, env: dict[str, str] | None = None,
                 ready_timeout_s: float = 300.0):
        self.name, self.cmd, self.port, self.log_path = name, cmd, port, Path(log_path)
        self.env = {**os.environ, **(env or {})}
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{port}"
        self.ready_s = float("nan")

    def __enter__(self) -> ServerProcess:
        if self.proc is None:  # ``with ServerProcess(...)`` starts it; ``with started_server`` only stops it
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        if self.proc is not None:
            raise RuntimeError(f"{self.name} was already started (pid {self.proc.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env, cwd=ROOT)
        ready_path = "/readyz"
        while time.perf_counter() - t0 < self.ready_timeout_s:
            if self.proc.poll() is not None:
                raise ServerError(f"{self.name} exited with status {self.proc.returncode} before it was ready: "
                                  f"{self.log_tail()}")
            if not listens(self.proc.pid, self.port):
                time.sleep(0.2)
                continue
            status = _get(self.url + ready_path)
            if status == 200:
                self.ready_s = time.perf_counter() - t0
                return
            if status == 404 and ready_path == "/readyz":
                ready_path = "/healthz"  # a server without a readiness endpoint: alive is all it can say
            time.sleep(0.2)
        self.stop()
        raise ServerError(f"{self.name} not ready within {self.ready_timeout_s:.0f} s: {self.log_tail()}")

    def stop(self, grace_s: float = 20.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:].strip()
        except OSError:
            return "(no log)"

    def rss_bytes(self) -> int:
        """Resident set size now (VmRSS), 0 once the process is gone."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except (OSError, AttributeError):
            pass
        return 0

    def tree_pss_bytes(self) -> int:
        """Proportional set size of the server and every process under it (the tiers' own processes), from
        /proc/PID/smaps_rollup: shared pages count once across them, as RSS summed would not."""
        total, todo, seen = 0, [self.proc.pid], set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            try:
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
                for task in Path(f"/proc/{pid}/task").iterdir():
                    todo += [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
        return total

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process (all its threads) so far."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, AttributeError, IndexError, ValueError):
            return float("nan")


def _absolute_paths(raw: dict, base: Path) -> dict:
    for tier in raw.get("tiers") or []:
        p = Path(str(tier.get("path", "")))
        if tier.get("path") and not p.is_absolute():
            tier["path"] = str((base / p).resolve())
    return raw


def read_config(config: Path) -> dict:
    raw = yaml.safe_load(Path(config).read_text(encoding="utf-8"))
    if not isinstance(raw, dict) or not raw.get("tiers"):
        raise ValueError(f"{config}: not a tiergate config (no `tiers` list)")
    return raw


def config_variant(config: Path, out: Path, server_tiers: dict[str, dict] | None = None,
                   sections: dict[str, dict] | None = None) -> Path:
    """A copy of ``config`` at ``out`` serving the same model files, with ``server.tiers.<name>`` entries
    merged in (``{"large": {"max_batch": 1}}``) and top-level ``sections`` replaced (``{"log": {...}}``)."""
    base = Path(config).resolve().parent
    raw = _absolute_paths(read_config(config), base)
    # tiers are read only from the config's folder and model_dirs: allow the original's folder, and its own
    dirs = [str(Path(d) if Path(d).is_absolute() else (base / d).resolve()) for d in raw.get("model_dirs") or []]
    raw["model_dirs"] = [*dirs, str(base)]
    for name, settings in (server_tiers or {}).items():
        tiers = raw.setdefault("server", {}).setdefault("tiers", {})
        tiers[name] = {**(tiers.get(name) or {}), **settings}
    raw.update(sections or {})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return out


def copy_workdir(config: Path, dest: Path) -> Path:
    """Copy the folder holding ``config`` (models, rules, the YAML) to ``dest``; returns the copy's config.
    Tier paths outside that folder stay as they were (made absolute)."""
    src = Path(config).resolve().parent
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest, symlinks=True, ignore=shutil.ignore_patterns("*.log", "__pycache__"))
    raw = read_config(config)
    moved = False
    for tier in raw["tiers"]:
        p = Path(str(tier.get("path", "")))
        full = p if p.is_absolute() else (src / p).resolve()
        if not full.is_relative_to(src) and not p.is_absolute():
            tier["path"], moved = str(full), True
    copy = dest / Path(config).name
    if moved:  # otherwise the copied file is already right, comments and all
        copy.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return copy


def tier_dir(config: Path, name: str) -> Path | None:
    """The artifact path of tier ``name`` in ``config`` (absolute), None if there is no such tier."""
    for tier in read_config(config)["tiers"]:
        if tier.get("name") == name:
            p = Path(str(tier["path"]))
            return p if p.is_absolute() else (Path(config).resolve().parent / p).resolve()
    return None
