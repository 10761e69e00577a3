"""The `unitok` CLI's parser: --help everywhere with defaults, one-line user errors, tracebacks for bugs."""

import argparse

import pytest

import unitok
from unitok.cli import build_parser, main
from unitok.core.errors import UnitokError

COMMANDS = ["train", "tokenize", "generate", "eval", "sweep", "bench", "shards", "shards inspect", "shards verify"]


@pytest.mark.parametrize("command", [[]] + [c.split() for c in COMMANDS])
def test_help_everywhere(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0 and "usage: unitok" in capsys.readouterr().out


def all_parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from all_parsers(sub)


def test_every_option_has_help_that_shows_its_default():
    for parser in all_parsers(build_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{parser.prog} {action.dest}: no help text"
            if action.default not in (None, False, argparse.SUPPRESS):
                shown = formatter._get_help_string(action)
                assert "default" in shown, f"{parser.prog} {action.dest}: default not shown"


def test_sweep_needs_a_known_kind(tmp_path, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text("recipe: quickstart\n")
    assert main(["sweep", str(path)]) == 1
    assert "kind: expected one of ['tokenizer', 'generation'], got None" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback_and_debug_shows_every_traceback(tmp_path, monkeypatch, capsys):
    path = tmp_path / "sweep.yaml"
    path.write_text("recipe: quickstart\n")
    with pytest.raises(UnitokError, match="kind: expected one of"):  # a user error, with --debug
        main(["--debug", "sweep", str(path)])

    def buggy(args):
        raise ValueError("too many values to unpack")  # what a bug inside unitok or a library raises
    monkeypatch.setattr("unitok.cli.cmd_sweep", buggy)
    with pytest.raises(ValueError, match="too many values"):
        main(["sweep", str(path)])
    assert "unitok: error" not in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"unitok {unitok.__version__}"
