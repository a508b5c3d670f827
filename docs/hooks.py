"""MkDocs hooks (mkdocs.yml `hooks:`): the command-line reference and the Python API reference are
generated from the code each time the site is built, so they cannot drift from it.

- `<!-- cli-reference -->` in a page becomes every `greater` subcommand with its usage and a table of
  its flags (help and default), read from the argparse parser (`greater.cli_flags.build`).
- `<!-- api-reference -->` becomes one mkdocstrings block per public name (`greater.__all__`).
"""

from __future__ import annotations

import argparse

CLI_MARK = "<!-- cli-reference -->"
API_MARK = "<!-- api-reference -->"


def subcommands() -> dict[str, argparse.ArgumentParser]:
    """Every `greater` subcommand's parser, by name, in the order `greater --help` lists them."""
    from greater import cli_flags

    parser = cli_flags.build()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _cell(text: object) -> str:
    """`text` as it should read in a Markdown table cell: no HTML, no emphasis, no column breaks."""
    text = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\n", " ")
    for char in "\\`*_[]|":
        text = text.replace(char, "\\" + char)
    return text


def _flag_row(action: argparse.Action) -> str:
    flags = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.dest.upper()}`"
    if action.metavar or (action.option_strings and action.nargs != 0 and action.choices is None):
        flags += f" {_cell(action.metavar or action.dest.upper())}"
    text = _cell(action.help or "")
    if action.choices is not None:
        text += " — one of " + ", ".join(f"`{c}`" for c in action.choices)
    if action.default not in (None, False, argparse.SUPPRESS):
        text += f" (default `{action.default}`)"
    return f"| {flags} | {text} |"


def cli_reference() -> str:
    """The command-line reference as Markdown: per subcommand its help, its synopsis and its flags, in
    the groups `greater SUBCOMMAND --help` shows."""
    from greater import cli_flags

    helps = {a.dest: a.help for a in cli_flags.build()._subparsers._group_actions[0]._choices_actions}
    lines = []
    for name, parser in subcommands().items():
        positionals = [a.dest.upper() for a in parser._actions if not a.option_strings]
        synopsis = " ".join([f"greater {name}", *positionals, "[options]"])
        lines += [f"## `greater {name}`", "", _cell(helps.get(name, "")), "", f"`{synopsis}`", ""]
        for group in parser._action_groups:
            actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
            if not actions:
                continue
            title = {"positional arguments": "arguments", "options": "options"}.get(group.title, group.title)
            lines += [f"**{title.capitalize()}**", "", "| flag | what it does |", "|---|---|"]
            lines += [_flag_row(action) for action in actions]
            lines.append("")
    return "\n".join(lines)


def api_reference() -> str:
    """One mkdocstrings block per name of `greater.__all__`, in that order, then of `greater.dspy.__all__`
    (the optional DSPy front end) under its own heading."""
    import greater
    import greater.dspy

    blocks = [f"::: greater.{name}" for name in greater.__all__]
    blocks += ['## greater.dspy (`pip install "greater[dspy]"`)']
    blocks += [f"::: greater.dspy.{name}" for name in greater.dspy.__all__]
    return "\n\n".join(blocks) + "\n"


def on_page_markdown(markdown: str, **kwargs: object) -> str:
    if CLI_MARK in markdown:
        markdown = markdown.replace(CLI_MARK, cli_reference())
    if API_MARK in markdown:
        markdown = markdown.replace(API_MARK, api_reference())
    return markdown
