"""Shared pieces of the command line: help options and the error handling every command group uses."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Mapping
from typing import Any

import click
from click.utils import make_default_short_help

from medannot.errors import MedAnnotError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


class MedAnnotGroup(click.Group):
    """A click group that turns MedAnnot errors into one line and exit code 1, never a traceback.

    ``lazy_commands`` maps a command name to ``("module:attribute", help)``: the module is imported only when that
    command runs (or its own help is asked for), so ``medannot seg export`` and ``medannot --help`` do not pay for
    the imports of every other command. ``help`` is the first paragraph of the command's docstring, which the
    group's ``--help`` shortens as click does, without importing (a test checks it is the command's own).
    """

    def __init__(self, *args: Any, lazy_commands: Mapping[str, tuple[str, str]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy_commands:
            module_name, _, attribute = self.lazy_commands[cmd_name][0].partition(":")
            command = getattr(importlib.import_module(module_name), attribute)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows: list[tuple[str, str | None]] = []
        for name in self.list_commands(ctx):
            command = self.commands.get(name)
            if command is None:
                rows.append((name, self.lazy_commands[name][1]))
            elif not command.hidden:
                rows.append((name, None))
        if not rows:
            return
        limit = formatter.width - 6 - max(len(name) for name, _ in rows)
        listing = [(name, make_default_short_help(help_text, limit) if help_text is not None
                    else self.commands[name].get_short_help_str(limit)) for name, help_text in rows]
        with formatter.section("Commands"):
            formatter.write_dl(listing)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MedAnnotError as exc:
            click.echo(f"medannot: error: {exc}", err=True)
            sys.exit(1)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("medannot: interrupted", err=True)
            sys.exit(130)
        except Exception as exc:  # noqa: BLE001 - last line of defence: no traceback reaches a user
            if os.environ.get("MEDANNOT_DEBUG"):
                raise
            click.echo(f"medannot: internal error: {type(exc).__name__}: {exc} "
                       "(set MEDANNOT_DEBUG=1 for the traceback and report it)", err=True)
            sys.exit(1)
