"""docs/cli.md is the CLI's help as it is: regenerated here, and compared."""

from pathlib import Path

from charnn.cli import build_parser
from charnn.cli.reference import COMMAND, commands, reference

PAGE = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_the_reference_page_is_the_help_of_every_command():
    assert PAGE.read_text(encoding="utf-8") == reference(), f"docs/cli.md is out of date; regenerate it: {COMMAND}"


def test_the_reference_lists_every_command():
    page = reference()
    names = list(commands(build_parser()))
    assert names[0] == "train" and "import-keras" in names
    for name in names:
        assert f"## charnn {name}\n" in page and f"usage: charnn {name} " in page
