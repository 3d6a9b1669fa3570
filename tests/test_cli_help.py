"""``--help``: plain text at the top, every subcommand with a purpose and an example, every option's default."""

import argparse

import pytest

from ssm_metarl.cli import HelpFormatter, build_parser

COMMANDS = ["train", "evaluate", "parity", "bench", "demo"]


def subparsers():
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def test_top_level_help_is_plain_text_with_each_command_and_an_example(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text
    for command in COMMANDS:
        assert f"\n    {command} " in text, command  # listed with its one-line purpose
        assert f"  ssm-metarl {command}" in text, command  # and an example


@pytest.mark.parametrize("command", [c for c in COMMANDS if c != "bench"])
def test_every_option_has_a_help_line_that_shows_its_default(command):
    parser = subparsers()[command]
    formatter = HelpFormatter(command)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        text = formatter._get_help_string(action) or ""
        assert text.strip(), f"{command} {action.option_strings} has no help"
        assert "default" in text, f"{command} {action.option_strings}: {text!r} shows no default"


def test_positional_arguments_are_explained():
    assert "checkpoint.safetensors" in subparsers()["evaluate"]._actions[1].help


def test_bench_options_have_help_and_show_their_defaults():
    """``ssm-metarl bench`` has its own parser (benchmarks/compare.py); the same rule holds there."""
    from benchmarks.compare import build_parser as bench_parser

    for action in bench_parser()._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        assert action.help and action.help.strip(), f"bench {action.option_strings} has no help"
        if action.nargs != 0:  # flags (store_true) have no default worth showing
            assert "default" in action.help, f"bench {action.option_strings}: {action.help!r} shows no default"
