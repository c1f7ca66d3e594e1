"""Hot reload through a real watchfiles watcher on a real file."""

import time

from tests.rules.conftest import GOOD
from tiergate.data import make_item
from tiergate.rules.reload import RulesWatcher
from tiergate.rules.tier import RulesTier


def wait_for(cond, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_file_change_swaps_a_good_file_and_rejects_a_broken_one(write, tmp_path):
    path = write("rules/r.yaml", GOOD)
    write("rules/unrelated.txt", "x")
    tier = RulesTier.from_path(path)
    v1 = tier.version()
    w = RulesWatcher(tier, debounce_ms=100).start()
    try:
        path.write_text(GOOD.replace("0.97", "0.61"))
        assert wait_for(lambda: tier.version() != v1), "the good file was not picked up"
        v2 = tier.version()
        assert tier.predict([make_item("lottery")])[0].confidence == 0.61 and w.reloads == 1

        path.write_text(GOOD.replace("[lottery, jackpot]", "[lottery, jackpot]\n  colour: red"))
        assert wait_for(lambda: w.failures >= 1), "the broken file was not seen"
        assert tier.version() == v2 and "r.yaml:7:" in w.last_error.problems[0]
        assert tier.predict([make_item("lottery")])[0].label == "spam"

        # an editor's save: write elsewhere, then rename over the file
        tmp = tmp_path / "rules" / ".r.yaml.swp"
        tmp.write_text(GOOD.replace("0.97", "0.62"))
        tmp.replace(path)
        assert wait_for(lambda: tier.predict([make_item("lottery")])[0].confidence == 0.62)
        n = w.reloads
        (tmp_path / "rules" / "unrelated.txt").write_text("y")
        time.sleep(0.5)
        assert w.reloads == n  # other files are ignored
    finally:
        w.stop()
    assert w._thread is None


def test_directory_of_rules(write, tmp_path):
    write("d/a.yaml", GOOD)
    tier = RulesTier.from_path(tmp_path / "d")
    w = RulesWatcher(tier, debounce_ms=100).start()
    try:
        write("d/b.yaml", "rules:\n  - id: extra\n    description: d\n    when: {keywords: [zebra]}\n"
                          "    then: {label: spam}\n    examples: {match: [zebra], no_match: [horse]}\n")
        assert wait_for(lambda: tier.predict([make_item("zebra")])[0].reason == "extra")
    finally:
        w.stop()
