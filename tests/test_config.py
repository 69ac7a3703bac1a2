"""Config: defaults, YAML, --set overrides with types, and clear errors naming the key."""

import pytest

from rlpt import config
from rlpt.errors import UserError


def test_paper_defaults_and_builtin_default():
    paper = config.Config()
    assert (paper.rlp.group_size, paper.rlp.max_thought_tokens, paper.rlp.temperature) == (16, 2048, 0.7)
    assert (paper.train.lr, paper.rlp.kl_coef, paper.rlp.ema_decay) == (1e-6, 0.0, 0.999)
    builtin = config.load()
    assert builtin.model.name_or_path == "builtin:tiny" and builtin.data.path == "builtin:arith"


def test_yaml_and_typed_overrides(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("rlp:\n  group_size: 4\ntrain:\n  lr: 1.0e-5\n")
    cfg = config.load(str(file), ["rlp.temperature=1", "train.dump_rollouts=true", "rlp.positions=list:3,4"])
    assert cfg.rlp.group_size == 4 and cfg.train.lr == 1e-5 and cfg.rlp.temperature == 1.0
    assert cfg.train.dump_rollouts is True and cfg.rlp.positions == "list:3,4"
    assert cfg.rlp.max_thought_tokens == 2048  # not in the file: the paper's default


@pytest.mark.parametrize(
    "override, message",
    [
        ("rlp.group_sise=4", "unknown config key rlp.group_sise"),
        ("rlpp.group_size=4", "unknown config section 'rlpp'"),
        ("rlp.group_size=1", "rlp.group_size must be >= 2"),
        ("rlp.temperature=-0.5", "rlp.temperature must be > 0"),
        ("rlp.group_size=four", "config key rlp.group_size: expected int"),
        ("rlp.positions=sometimes", "rlp.positions"),
        ("group_size", "expected section.key=value"),
    ],
)
def test_bad_keys_and_values(override, message):
    with pytest.raises(UserError, match=message):
        config.load(None, [override])


def test_bad_yaml_file(tmp_path):
    with pytest.raises(UserError, match="cannot read"):
        config.load(str(tmp_path / "missing.yaml"))
    (tmp_path / "bad.yaml").write_text("rlp:\n  group_size: 4\n  positions: [1, 2\ntrain: {}\n")
    with pytest.raises(UserError) as error:
        config.load(str(tmp_path / "bad.yaml"))
    message = str(error.value)  # one line naming the file, line and column; no caret drawing
    assert "\n" not in message and message.startswith(f"--config {tmp_path / 'bad.yaml'}:4:6: not valid YAML (")


def test_the_builtin_demos_settings_apply_to_the_builtin_demo_only():
    demo = config.load()
    assert demo.eval.tasks == "builtin:arith" and demo.train.next_token_data == "builtin:arith-warm"
    assert config.load(None, ["model.name_or_path=elsewhere"]).train.lr == demo.train.lr  # still the demo's corpus
    own = config.load(None, ["model.name_or_path=my-model", "data.path=my.txt"])
    paper = config.Config()
    assert own.eval.tasks == "" and own.train.next_token_data == "" and own.rlp == paper.rlp
    assert (own.train.lr, own.train.batch_documents, own.train.max_steps) == (1e-6, 8, 100)


def test_print_config_shows_the_resolved_config_and_starts_nothing(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    from rlpt.cli import main

    monkeypatch.chdir(tmp_path)
    example = Path(__file__).parent.parent / "examples" / "own_model.yaml"
    assert main(["train", "--config", str(example), "--set", "rlp.group_size=4", "--print-config"]) == 0
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    again = config.load(str(printed))
    assert again == config.load(str(example), ["rlp.group_size=4"]) and again.rlp.group_size == 4
    assert not (tmp_path / "runs").exists()
