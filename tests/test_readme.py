"""The docs document every config key and every metric the trainer writes."""

import dataclasses
from pathlib import Path

from rlpt import config

DOCS = Path(__file__).resolve().parent.parent / "docs"
CONFIGURATION = (DOCS / "configuration.md").read_text()
RUN_FOLDER = (DOCS / "run-folder.md").read_text()


def test_every_config_key_is_in_the_configuration_table():
    for section in dataclasses.fields(config.Config):
        for field in dataclasses.fields(section.default_factory()):
            assert f"| `{section.name}.{field.name}` |" in CONFIGURATION, f"{section.name}.{field.name} missing from docs/configuration.md"


def test_every_metric_is_explained(llama_dir, tmp_path):
    import json

    from rlpt.cli import main

    run = tmp_path / "run"
    assert main(["train", "--output", str(run), "--set", f"model.name_or_path={llama_dir}", "--set", "rlp.group_size=2",
                 "--set", "rlp.max_thought_tokens=2", "--set", "train.max_steps=1", "--set", "eval.tasks=",
                 "--set", "rlp.positions=random:1", "--set", "train.batch_documents=1"]) == 0
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    for key in row:
        assert f"`{key}`" in RUN_FOLDER, f"metric {key} is not explained in docs/run-folder.md"
