"""The CLI reference, docs/cli.md: `charnn --help` and each command's, as one Markdown page.

    python -m charnn.cli.reference > docs/cli.md

tests/test_cli_reference.py fails when the page and the help differ, so it cannot go stale.
"""

import argparse
import os

from charnn.cli import build_parser

COMMAND = "python -m charnn.cli.reference > docs/cli.md"
WIDTH = "100"  # columns the help is wrapped to, whatever the terminal


def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each command's name and parser, in the order `charnn --help` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def reference() -> str:
    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH  # argparse wraps to the terminal's width, read from COLUMNS first
    try:
        parser = build_parser()
        sections = [("charnn", parser.format_help())]
        sections += [(f"charnn {name}", command.format_help()) for name, command in commands(parser).items()]
    finally:
        if previous is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = previous
    lines = [
        "# Command-line reference",
        "",
        f"Generated from each command's `--help` by `{COMMAND}`; do not edit by hand.",
        "",
        "Commands: " + ", ".join(f"[{title}](#{title.replace(' ', '-')})" for title, _ in sections[1:]) + ".",
    ]
    for title, text in sections:
        lines += ["", f"## {title}", "", "```text", text.rstrip("\n"), "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(reference(), end="")
