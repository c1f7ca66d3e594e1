"""The rules tier against SpamAssassin 4 on the same test messages, in one run.

Needs SpamAssassin from Debian's packages (this script installs nothing itself):

    apt-get update && apt-get install -y spamassassin spamc

Then, from the project's root:

    python bench/rules_vs_spamassassin.py                 # all 769 test messages
    python bench/rules_vs_spamassassin.py --limit 300     # a bounded run

What runs, on the canonical test split of ``spamassassin`` (BRIEF section 2):

1. SpamAssassin, local tests only (``spamd --local``: no DNS blocklists, Razor or Pyzor), ``spamd`` with two
   children and two concurrent ``spamc -c`` clients (one per core), twice: Bayes off (rules only), and Bayes
   on, trained with ``sa-learn`` on the train split. Messages per second = messages / wall time.
2. The rules tier with the shipped pack: the function behind ``tiergate rules bench`` (parsing included), one
   process, and the same work split over two processes (one per core, like spamd's two children).

Accuracy: SpamAssassin's verdict (spam when the score reaches its threshold of 5.0) against the corpus label.
The rules tier decides only part of the messages (the rest go to the models in a cascade), so it reports
coverage, precision on what it decides, and accuracy counting undecided messages as ham (delivered), which is
what a rules-only filter would do.

Writes ``bench/results/rules_vs_spamassassin.json`` and ``.md`` and prints the table.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tiergate.data import load_dataset, make_item  # noqa: E402
from tiergate.rules.engine import Engine  # noqa: E402
from tiergate.rules.evaluate import bench as rules_bench  # noqa: E402
from tiergate.rules.loader import load_path  # noqa: E402
from tiergate.rules.tier import pack_path  # noqa: E402

INSTALL_HINT = "apt-get update && apt-get install -y spamassassin spamc"
SA_SITE = Path("/etc/spamassassin")


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        sys.exit(f"{tool} not found: install SpamAssassin first ({INSTALL_HINT})")
    return path


def machine() -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    sa = subprocess.run(["spamassassin", "--version"], capture_output=True, text=True).stdout.splitlines()
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "load_average_1m_at_start": round(os.getloadavg()[0], 2),
            "platform": platform.platform(), "spamassassin": sa[0] if sa else "?"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_messages(texts: list[str], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, t in enumerate(texts):
        p = folder / f"{i:05d}.eml"
        p.write_text(t, encoding="utf-8", errors="surrogateescape")
        paths.append(p)
    return paths


def site_config(work: Path, bayes: bool) -> Path:
    """A copy of Debian's /etc/spamassassin (it loads the plugins) with our settings in local.cf."""
    site = work / "site"
    if site.exists():
        shutil.rmtree(site)
    shutil.copytree(SA_SITE, site, ignore=shutil.ignore_patterns("sa-update-hooks.d"))
    lines = ["use_bayes 1" if bayes else "use_bayes 0", "bayes_auto_learn 0", "skip_rbl_checks 1"]
    if bayes:
        lines += [f"bayes_path {work / 'bayes' / 'bayes'}", "bayes_file_mode 0777"]
    (site / "local.cf").write_text("\n".join(lines) + "\n")
    return site


class Spamd:
    """spamd on loopback with two children and a private configuration (Bayes on or off)."""

    def __init__(self, work: Path, bayes: bool, children: int = 2):
        self.work = work
        self.port = free_port()
        self.site = site_config(work, bayes)
        # spamd drops root privileges to debian-spamd; let it read the config and the Bayes database.
        subprocess.run(["chmod", "-R", "a+rwX", str(work)], check=False)
        self.cmd = [need("spamd"), "--local", "--listen", f"127.0.0.1:{self.port}", "--allowed-ips", "127.0.0.1",
                    f"--max-children={children}", f"--min-children={children}", f"--min-spare={children}",
                    f"--max-spare={children}", "--siteconfigpath", str(self.site), "--nouser-config",
                    "--username", "debian-spamd", "--syslog=stderr", "--pidfile", str(work / "spamd.pid")]
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Spamd:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=open(self.work / "spamd.log", "w"))
        deadline = time.time() + 180
        while time.time() < deadline:
            ping = subprocess.run([need("spamc"), "-d", "127.0.0.1", "-p", str(self.port), "-K"],
                                  capture_output=True, text=True)
            if ping.returncode == 0:
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"spamd exited: {(self.work / 'spamd.log').read_text()[-2000:]}")
            time.sleep(0.5)
        raise RuntimeError("spamd did not answer within 180 s")

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def spamc_check(port: int, path: Path) -> tuple[bool, float]:
    """spamc -c: prints 'score/threshold'; exit status 1 means spam."""
    with path.open("rb") as f:
        r = subprocess.run([need("spamc"), "-d", "127.0.0.1", "-p", str(port), "-c", "-s", "2000000"],
                           stdin=f, capture_output=True, text=True)
    score = float(r.stdout.split("/")[0]) if "/" in r.stdout else float("nan")
    return r.returncode == 1, score


def run_spamassassin(work: Path, paths: list[Path], labels: list[str], bayes: bool, clients: int) -> dict:
    with Spamd(work, bayes=bayes) as spamd:
        spamc_check(spamd.port, paths[0])  # warm both children's caches out of the timing
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(lambda p: spamc_check(spamd.port, p), paths))
        wall = time.perf_counter() - t0
    verdicts = ["spam" if is_spam else "ham" for is_spam, _ in results]
    correct = sum(v == y for v, y in zip(verdicts, labels, strict=True))
    ham = [v for v, y in zip(verdicts, labels, strict=True) if y == "ham"]
    return {"system": f"SpamAssassin, local tests, Bayes {'on' if bayes else 'off'}", "n": len(paths),
            "seconds": wall, "messages_per_second": len(paths) / wall, "accuracy": correct / len(paths),
            "coverage": 1.0, "precision": correct / len(paths),
            "ham_false_positive_rate": sum(v == "spam" for v in ham) / max(1, len(ham)),
            "processes": 2}


def sa_learn(work: Path, train_texts: list[str], train_labels: list[str]) -> float:
    t0 = time.perf_counter()
    for label in ("spam", "ham"):
        folder = work / "train" / label
        write_messages([t for t, y in zip(train_texts, train_labels, strict=True) if y == label], folder)
        # --dbpath takes the bayes_path form: a file prefix (bayes/bayes -> bayes/bayes_toks), as local.cf says
        (work / "bayes").mkdir(exist_ok=True)
        subprocess.run([need("sa-learn"), "--local", f"--dbpath={work / 'bayes' / 'bayes'}", "--siteconfigpath",
                        str(work / "site"), f"--{label}", str(folder)], check=True, capture_output=True)
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------- rules tier
_WORKER_ENGINE: Engine | None = None


def _init_worker(pack: str) -> None:
    global _WORKER_ENGINE
    _WORKER_ENGINE = Engine(load_path(pack))


def _decide_chunk(args: tuple[str, list[str]]) -> list[str | None]:
    pack, texts = args
    engine = _WORKER_ENGINE or Engine(load_path(pack))
    out = []
    for t in texts:
        d = engine.decide(make_item(t, max_chars=engine.max_chars), record=False)
        out.append(d.label if d.kind == "label" else None)
    return out


def run_rules(pack: Path, texts: list[str], labels: list[str], repeat: int) -> list[dict]:
    engine = Engine(load_path(pack))
    one = rules_bench(engine, texts, repeat=repeat)
    decided = _decide_chunk((str(pack), texts))

    def quality(name: str, mps: float, seconds: float, processes: int) -> dict:
        pairs = [(d, y) for d, y in zip(decided, labels, strict=True) if d is not None]
        as_ham = ["ham" if d is None else d for d in decided]
        ham = [v for v, y in zip(as_ham, labels, strict=True) if y == "ham"]
        return {"system": name, "n": len(texts), "seconds": seconds, "messages_per_second": mps,
                "coverage": len(pairs) / len(texts),
                "precision": sum(d == y for d, y in pairs) / max(1, len(pairs)),
                "accuracy": sum(v == y for v, y in zip(as_ham, labels, strict=True)) / len(texts),
                "ham_false_positive_rate": sum(v == "spam" for v in ham) / max(1, len(ham)),
                "processes": processes}

    rows = [quality("tiergate rules tier (spamassassin pack)", one["messages_per_second"], one["seconds"], 1)]
    # Two processes, like spamd's two children: each parses and decides half the messages.
    half = (len(texts) + 1) // 2
    chunks = [(str(pack), texts[:half]), (str(pack), texts[half:])]
    ctx = mp.get_context("fork")
    best = float("inf")
    with ctx.Pool(2, initializer=_init_worker, initargs=(str(pack),)) as pool:
        pool.map(_decide_chunk, [(str(pack), texts[:4])] * 2)  # start-up out of the timing
        for _ in range(repeat):
            t0 = time.perf_counter()
            pool.map(_decide_chunk, chunks, chunksize=1)
            best = min(best, time.perf_counter() - t0)
    # The timing includes sending the raw messages to the workers and the answers back.
    rows.append(quality("tiergate rules tier, 2 processes", len(texts) / best, best, 2))
    return rows


def markdown(rows: list[dict], info: dict, command: str, notes: list[str]) -> str:
    lines = [f"Command: `{command}`", "",
             f"Machine: {info['cpu']}, {info['cores']} cores, Python {info['python']}; {info['spamassassin']}.", "",
             "| system | processes | messages/s | vs SpamAssassin (Bayes on) | accuracy | coverage | precision on decided | ham FP rate |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    ref = next((r["messages_per_second"] for r in rows if "Bayes on" in r["system"]), None)
    for r in rows:
        speed = f"{r['messages_per_second'] / ref:.0f}x" if ref else "-"
        lines.append(f"| {r['system']} | {r['processes']} | {r['messages_per_second']:.1f} | {speed} | "
                     f"{r['accuracy']:.3f} | {r['coverage']:.3f} | {r['precision']:.3f} | "
                     f"{r['ham_false_positive_rate']:.4f} |")
    lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=0, help="test messages to use (0: all 769)")
    ap.add_argument("--pack", default=str(pack_path("spamassassin")))
    ap.add_argument("--clients", type=int, default=2, help="concurrent spamc clients (spamd has 2 children)")
    ap.add_argument("--repeat", type=int, default=3, help="passes of the rules tier; the best is kept")
    ap.add_argument("--skip-bayes", action="store_true", help="run SpamAssassin without Bayes only")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = ap.parse_args()
    for tool in ("spamd", "spamc", "sa-learn", "spamassassin"):
        need(tool)

    ds = load_dataset("spamassassin")
    test = ds.split("test")
    if args.limit:
        test = test[: args.limit]
    train = ds.split("train")
    texts, labels = [e.text for e in test], [e.label for e in test]
    info = machine()
    notes = []
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="sa-bench-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # spamd runs as debian-spamd and must reach the folders below
        paths = write_messages(texts, work / "test")
        print(f"SpamAssassin, Bayes off, on {len(paths)} messages ...", flush=True)
        rows.append(run_spamassassin(work / "nobayes", paths, labels, bayes=False, clients=args.clients))
        if not args.skip_bayes:
            bayes_work = work / "bayes-run"
            bayes_work.mkdir()
            site_config(bayes_work, bayes=True)
            print(f"sa-learn on {len(train)} train messages ...", flush=True)
            learn_s = sa_learn(bayes_work, [e.text for e in train], [e.label for e in train])
            notes.append(f"sa-learn on the {len(train)} train messages took {learn_s:.0f} s (not in the timings).")
            print("SpamAssassin, Bayes on ...", flush=True)
            rows.append(run_spamassassin(bayes_work, paths, labels, bayes=True, clients=args.clients))
    print("rules tier ...", flush=True)
    rows += run_rules(Path(args.pack), texts, labels, args.repeat)
    notes.append(f"{len(texts)} messages of the test split" + (" (bounded with --limit)" if args.limit else "") + ".")
    notes.append("SpamAssassin: spamd --local with 2 children, 2 concurrent spamc -c clients; wall time includes "
                 "spamc start-up per message. Rules tier: parsing (make_item) included, best of "
                 f"{args.repeat} passes.")
    notes.append("Rules-tier accuracy counts the messages no rule decides as ham; in the cascade they go to the "
                 "models instead.")
    command = "python bench/rules_vs_spamassassin.py" + (f" --limit {args.limit}" if args.limit else "")
    info["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    notes.append(f"1-minute load average {info['load_average_1m_at_start']} at the start and "
                 f"{info['load_average_1m_at_end']} at the end (other work shared the machine).")
    report = {"rows": rows, "machine": info, "command": command, "notes": notes}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rules_vs_spamassassin.json").write_text(json.dumps(report, indent=2))
    md = markdown(rows, info, command, notes)
    (out / "rules_vs_spamassassin.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
