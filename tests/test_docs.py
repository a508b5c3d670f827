"""The documentation site (mkdocs.yml, docs/): it builds with `--strict`, its command-line reference
holds every flag of every subcommand (generated from the parser), its API reference every public name,
and every code block Getting started marks as runnable runs."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import greater
import greater.dspy  # the optional DSPy front end: its names have their own heading
from helpers import REPO

# one pytest worker runs this file's tests: its module fixture is made once (make test: --dist loadgroup)
pytestmark = pytest.mark.xdist_group("docs")

RUNNABLE = re.compile(r"<!-- runnable -->\n```(bash|python)\n(.*?)```", re.DOTALL)


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", REPO / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = os.environ | {"NO_MKDOCS_2_WARNING": "1"}
    command = [str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "--site-dir", str(out)]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


@pytest.mark.slow
def test_the_cli_reference_holds_every_flag_of_every_subcommand(site):
    page = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    commands = _hooks().subcommands()
    assert set(commands) == {"optimize", "evaluate", "compare", "export", "report", "tasks"}
    for name, parser in commands.items():
        assert f"greater {name}" in page
        for action in parser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"<code>{flag}</code>" in page, f"greater {name} {flag}"
            if action.help and action.option_strings and action.option_strings[0] != "-h":
                # the help as argparse has it, HTML-escaped by the page
                text = action.help.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
                assert text.replace("'", "&#39;") in page or text in page, f"greater {name}: {action.help}"


@pytest.mark.slow
def test_the_api_reference_documents_every_public_name(site):
    page = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
    documented = set(re.findall(r'<h3 id="greater\.([A-Za-z_]+)"', page))
    assert documented == set(greater.__all__)
    assert set(re.findall(r'<h3 id="greater\.dspy\.([A-Za-z_]+)"', page)) == set(greater.dspy.__all__)


@pytest.mark.slow
def test_getting_started_blocks_marked_runnable_run(tmp_path):
    text = (REPO / "docs" / "getting-started.md").read_text(encoding="utf-8")
    blocks = RUNNABLE.findall(text)
    assert [kind for kind, _ in blocks] == ["bash", "python"]
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for kind, code in blocks:
        command = ["bash", "-euo", "pipefail", "-c", code] if kind == "bash" else [sys.executable, "-c", code]
        proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{kind} block failed:\n{code}\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    assert (tmp_path / "runs" / "reviews" / "result.json").is_file()
    assert (tmp_path / "runs" / "python-demo" / "prompt.json").is_file()
