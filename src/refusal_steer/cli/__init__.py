"""The ``refusal-steer`` command line: a thin layer over the library.

Each sub-command group lives in its own module here and is registered in :func:`build_app`.
Errors from the library (:class:`~refusal_steer.errors.RefusalSteerError`) are printed as one line
with the fix and exit code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import logging
import sys

import typer

from .. import __version__
from ..errors import RefusalSteerError
from ._common import console, err_console, state

app = typer.Typer(
    name="refusal-steer",
    help="Find, explain and steer refusal in chat language models through their activations.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"refusal-steer {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
) -> None:
    """Find, explain and steer refusal in chat language models through their activations."""
    state.debug = debug
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def build_app() -> typer.Typer:
    """Register every sub-command group on the root app."""
    from . import commands  # noqa: F401  (registers sub-commands on import)

    return app


def main() -> None:
    """Console-script entry point."""
    build_app()
    try:
        app(standalone_mode=False)
    except RefusalSteerError as exc:
        if state.debug:
            raise
        err_console.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        if exc.fix:
            err_console.print(f"[bold]fix:[/] {exc.fix}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted; finished stages are kept and a rerun resumes from them")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
