"""Shared pieces of the command line: help options and the error handling every command group uses."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from medannot.errors import MedAnnotError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


class MedAnnotGroup(click.Group):
    """A click group that turns MedAnnot errors into one line and exit code 1, never a traceback."""

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
