import pytest

from tiergate.config import load_config, save_config
from tiergate.errors import ConfigError


def test_round_trip_and_env_override(tiny_workdir, monkeypatch, tmp_path):
    cfg, base = load_config(tiny_workdir / "tiergate.yaml")
    assert base == tiny_workdir and [t.name for t in cfg.tiers] == ["small", "final"]
    save_config(cfg, tmp_path / "c.yaml")
    monkeypatch.setenv("TIERGATE_SERVER__MAX_INFLIGHT", "7")
    cfg2, _ = load_config(tmp_path / "c.yaml")
    assert cfg2.server.max_inflight == 7 and cfg2.tiers == cfg.tiers


@pytest.mark.parametrize("text,msg", [
    ("tiers: []", "at least one tier"),
    ("tiers: [{name: a, kind: onnx, path: x, colour: red}]", "colour"),
    ("tiers: [{name: a, kind: magic, path: x}]", "kind"),
    ("[1, 2", "not valid YAML"),
    ("- a", "top level"),
])
def test_errors_name_the_key(tmp_path, text, msg):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=msg):
        load_config(p)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="quickstart"):
        load_config(tmp_path / "none.yaml")
