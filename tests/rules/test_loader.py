from tiergate.rules.loader import load_path, load_text


def test_marks_point_at_the_offending_key(write):
    src = load_text("version: 1\nrules:\n  - id: a\n    description: d\n    when: {keywords: [x]}\n"
                    "    then: {label: spam}\n    colour: red\n", name="f.yaml")
    (p,) = src.errors
    assert (p.file, p.line, p.column, p.rule_id) == ("f.yaml", 7, 5, "a")
    assert "unknown key 'colour'" in p.message
    assert str(p).startswith("f.yaml:7:5: a: unknown key 'colour'")


def test_one_bad_rule_hides_nothing_else():
    src = load_text("rules:\n  - {id: a, description: d, when: {keywords: [x]}, then: {label: s}, bad: 1}\n"
                    "  - {id: B, description: d, when: {keywords: [x]}, then: {label: s}}\n"
                    "  - {id: c, description: d, when: {keywords: [x]}, then: {label: s}}\n")
    assert [p.line for p in src.errors] == [2, 3]
    assert [e.rule is not None for e in src.entries] == [False, False, True]


def test_yaml_syntax_error_has_a_location():
    src = load_text("rules:\n  - id: a\n   bad indent: [\n", name="y.yaml")
    (p,) = src.errors
    assert p.check == "yaml" and p.file == "y.yaml" and p.line >= 2


def test_duplicate_mapping_keys_are_reported():
    src = load_text("rules:\n  - id: a\n    id: b\n    description: d\n    when: {keywords: [x]}\n"
                    "    then: {label: s}\n")
    assert any("appears twice" in p.message and p.line == 3 for p in src.errors)


def test_directory_loads_every_file_and_checks_mode(write, tmp_path):
    write("rules/a.yaml", "rules:\n  - {id: a, description: d, when: {keywords: [x]}, then: {label: s}}\n")
    write("rules/sub/b.yml", "rules:\n  - {id: b, description: d, when: {keywords: [y]}, then: {label: s}}\n")
    write("rules/notes.txt", "not a rule file")
    write("rules/.a.yaml", "half-saved: [")         # an editor's temporary copy
    write("rules/.git/x.yaml", "not: [rules")
    src = load_path(tmp_path / "rules")
    assert [r.id for r in src.rules] == ["a", "b"] and not src.problems
    v1 = src.version()
    write("rules/c.yaml", "mode: scoring\nthreshold: {s: 1}\nrules: []\n")
    src2 = load_path(tmp_path / "rules")
    assert any("differ from the first file" in p.message for p in src2.errors)
    assert src2.version() != v1


def test_missing_path_and_empty_file(write, tmp_path):
    assert load_path(tmp_path / "nope.yaml").errors[0].check == "io"
    assert "empty" in load_path(write("e.yaml", "")).errors[0].message


def test_yaml_booleans_get_a_quoting_hint():
    src = load_text("rules:\n  - {id: off, description: d, when: {keywords: [x]}, then: {label: s}}\n")
    (p,) = src.errors
    assert "quote" in p.hint and p.rule_id == "rules[0]"
