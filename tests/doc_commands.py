"""The operator command lines the documentation shows (README.md and docs/*.md), as a person
would copy them out of the code blocks: for tests that run them as written."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import click

from devtools import processes

DOCUMENTS = [processes.REPO_ROOT / "README.md", *sorted((processes.REPO_ROOT / "docs").glob("*.md"))]
COMMAND = "improvmx-archive"
FENCE = re.compile(r"^```")
SHELL_FENCE = re.compile(r"^```(sh|bash|shell|console)\s*$")
# The forms the one command replaced: a document showing one of these is out of date.
OLD_FORMS = re.compile(r"flask --app|\.venv/bin/flask|dev\.sh flask")


@dataclass(frozen=True)
class DocumentedCommand:
    source: str  # file:line, for failure messages
    args: tuple[str, ...]  # what follows `improvmx-archive`


def code_lines() -> list[tuple[str, str]]:
    """(file:line, line) of every line inside a shell code block (```sh), continuation lines
    joined."""
    found = []
    for document in DOCUMENTS:
        inside, shell, pending, start = False, False, "", 0
        for number, line in enumerate(document.read_text().splitlines(), 1):
            if FENCE.match(line):
                inside, shell = not inside, bool(SHELL_FENCE.match(line)) and not inside
                continue
            if not shell:
                continue
            if not pending:
                start = number
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            found.append((f"{document.name}:{start}", pending + line))
            pending = ""
    return found


def documented_commands() -> list[DocumentedCommand]:
    commands = []
    for source, line in code_lines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue  # not shell (JSON, YAML, a log line with an odd quote)
        for position, word in enumerate(words):
            if word.rsplit("/", 1)[-1] == COMMAND:
                rest = words[position + 1:]
                end = next((i for i, w in enumerate(rest) if w in ("|", "&&", ";", ">", "2>&1")), len(rest))
                commands.append(DocumentedCommand(source, tuple(rest[:end])))
                break
    return commands


def command_path(app, args: tuple[str, ...]) -> tuple[str, ...]:
    """The (sub)command names at the start of args, as the app's CLI knows them."""
    group, path = app.cli, []
    context = click.Context(app.cli)
    for word in args:
        lookup = getattr(group, "get_command", None)  # app.cli registers its commands on first lookup
        command = lookup(context, word) if lookup else None
        if command is None:
            break
        path.append(word)
        group = command
    return tuple(path)


def outdated_lines() -> list[tuple[str, str]]:
    return [(source, line) for source, line in code_lines() if OLD_FORMS.search(line)]


def repo_command() -> Path:
    return processes.REPO_ROOT / COMMAND
