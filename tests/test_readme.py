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


def documented_command_lines():
    """Every `rlpt ...` command of the README and docs (lines of code blocks, continuations joined, and inline code
    spans) and of the examples' comments, with where it stands."""
    import re

    root = DOCS.parent
    for path in [root / "README.md", *sorted(DOCS.glob("*.md")), *sorted((root / "examples").glob("*.yaml"))]:
        text = path.read_text()
        lines = text.splitlines()
        in_block = path.suffix == ".yaml"
        joined, start = "", 0
        for number, line in enumerate(lines, 1):
            if line.startswith("```"):
                in_block = not in_block
                continue
            line = line.lstrip("# ").strip() if path.suffix == ".yaml" else line.strip()
            if joined:
                joined += " " + line.rstrip("\\").strip()
            elif in_block and line.startswith("rlpt "):
                joined, start = line.rstrip("\\").strip(), number
            else:
                continue
            if not line.endswith("\\"):
                yield f"{path.name}:{start}", joined.split(" && ")[0]
                joined = ""
        if path.suffix == ".md":
            prose = re.sub(r"```.*?```", "", text, flags=re.S)
            for span in re.finditer(r"`(rlpt [^`]+)`", prose):
                yield f"{path.name} (inline)", " ".join(span.group(1).split())


def test_every_documented_command_line_parses_and_names_real_keys():
    """A renamed flag or config key fails here, so the docs cannot drift from the code."""
    import re
    import shlex

    from rlpt.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    seen = 0
    for where, line in documented_command_lines():
        words = shlex.split(line, comments=True)[1:]
        if not words or words[0] not in commands:
            assert not words or not words[0].isalpha() or words[0] in commands, f"{where}: unknown command in {line!r}"
            continue  # `rlpt ...` prose such as "rlpt: error"
        sub = commands[words[0]]
        for flag in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", line):  # in a synopsis's brackets too
            assert flag in sub._option_string_actions, f"{where}: rlpt {words[0]} has no {flag} ({line!r})"
        sets = [value for flag, value in zip(words, words[1:]) if flag == "--set"]
        config.load(None, sets)  # every key it sets is known, every value of the key's type
        if "inline" in where or any(mark in line for mark in ("[", "|", "...", "RUN_DIR")):
            continue  # a command named in prose, or a synopsis: its flags and keys are checked above
        args = parser.parse_args(words)  # a whole command line: it runs as written
        if words[0] == "train" and args.config and (DOCS.parent / args.config).is_file():
            config.load(str(DOCS.parent / args.config), sets)
        seen += 1
    assert seen >= 5  # whole command lines, parsed as they are written
