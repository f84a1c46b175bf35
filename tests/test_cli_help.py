"""Every console script's flags have a help text, and its usage line names the console script
(``bidl-run``, not ``python -m ...``). The parsers are built in this process: nothing is run."""
import argparse
import tomllib
from importlib import import_module
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]

# console script -> the module whose build_parser() it runs (bidl_grid.cli names the same modules)
PARSERS = {
    "bidl-train": "bidl_models.train",
    "bidl-test": "bidl_models.evaluate",
    "bidl-compile": "compile.__main__",
    "bidl-run": "bidl_runtime.run",
    "bidl-plan": "bidl_runtime.plan.__main__",
}


def test_every_console_script_is_covered():
    assert sorted(SCRIPTS) == sorted(PARSERS)
    cli = import_module("bidl_grid.cli")
    src = Path(cli.__file__).read_text()
    for script, module in PARSERS.items():
        entry = SCRIPTS[script].split(":")[1]
        assert callable(getattr(cli, entry)), script
        assert f'"{module}"' in src, (script, module)


@pytest.mark.parametrize("script", sorted(PARSERS))
def test_every_flag_has_help_and_usage_names_the_script(script):
    parser = import_module(PARSERS[script]).build_parser()
    assert isinstance(parser, argparse.ArgumentParser)
    assert parser.prog == script
    assert parser.format_usage().startswith(f"usage: {script} ")
    assert "python -m" not in parser.format_usage()
    missing = [a.option_strings or [a.dest] for a in parser._actions
               if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert missing == [], f"{script}: flags without help: {missing}"
    assert parser.description, script

