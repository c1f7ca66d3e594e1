"""`tiergate rules ...` through typer's runner: exit codes, output formats, no tracebacks."""

import json

from typer.testing import CliRunner

from tests.rules.conftest import GOOD
from tests.rules.test_lint import BROKEN
from tiergate.rules.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_lint(write):
    ok = run("lint", write("good.yaml", GOOD))
    assert ok.exit_code == 0, ok.output
    bad_path = write("broken.yaml", BROKEN)
    bad = run("lint", bad_path)
    assert bad.exit_code == 1 and "Traceback" not in bad.output
    for rid in ("unclosed", "dupe", "typo-key", "redos", "narrow", "scored"):
        assert f"{bad_path}:" in bad.output and f": {rid}: " in bad.output
    as_json = json.loads(run("lint", bad_path, "--json").output)
    assert {p["check"] for p in as_json} >= {"regex", "duplicate-id", "schema", "backtracking", "unreachable"}
    missing = run("lint", bad_path.parent / "nope.yaml")
    assert missing.exit_code == 1 and "no such file" in missing.output


def test_test_command(write):
    assert run("test", write("good.yaml", GOOD)).exit_code == 0
    failing = GOOD.replace('no_match: ["lotteryticket"]', 'no_match: ["lottery ticket"]')
    r = run("test", write("f.yaml", failing))
    assert r.exit_code == 1 and "lottery: example no_match[0] 'lottery ticket' matches" in r.output
    r = run("test", write("b.yaml", BROKEN))
    assert r.exit_code == 1 and "Traceback" not in r.output


def test_explain_and_the_time_limit(write):
    r = run("explain", write("good.yaml", GOOD), "--text", "You won the lottery")
    assert r.exit_code == 0 and "label spam" in r.output and "keyword 'lottery'" in r.output
    redos = write("redos.yaml", "rules:\n  - {id: redos, description: d, when: {regex: '(a+)+$'}, "
                                "then: {label: spam}}\n")
    r = run("explain", redos, "--text", "a" * 40000 + "!", "--json")
    assert r.exit_code == 0
    out = json.loads(r.output)
    assert out["timeouts"] == ["redos"] and out["decision"]["kind"] == "none"


def test_eval_and_bench_json(write, tmp_path):
    data = tmp_path / "d.jsonl"
    rows = [("win the lottery", "spam"), ("lottery club news", "ham"), ("meeting notes", "ham")] * 3
    data.write_text("\n".join(json.dumps({"text": t, "label": lab, "split": "calibration"}) for t, lab in rows))
    path = write("good.yaml", GOOD)
    r = run("eval", path, "--data", data, "--split", "calibration", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert {"rules", "coverage", "precision", "conflicts"} <= set(d)
    lot = next(x for x in d["rules"] if x["id"] == "lottery")
    assert {"id", "hits", "precision", "coverage"} <= set(lot) and lot["hits"] == 6 and lot["precision"] == 0.5
    assert "lottery" in run("eval", path, "--data", data, "--split", "calibration").output
    b = json.loads(run("bench", path, "--data", data, "--split", "calibration", "--json", "--repeat", "1").output)
    assert b["messages_per_second"] > 0 and b["n"] == 9
    r = run("eval", path, "--data", tmp_path / "none.jsonl")
    assert r.exit_code == 1 and "unknown data set" in r.output


def test_pack_and_schema():
    r = run("pack", "spamassassin")
    assert r.exit_code == 0 and r.output.strip().endswith("spamassassin.yaml")
    r = run("pack", "nope")
    assert r.exit_code == 1 and "use one of" in r.output
    schema = json.loads(run("schema").output)
    assert schema["additionalProperties"] is False and "Rule" in schema["$defs"]
