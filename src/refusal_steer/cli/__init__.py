"""The ``refusal-steer`` command line: a thin layer over the library.

Each sub-command group lives in its own module here and is registered in :func:`build_app`.
Errors from the library (:class:`~refusal_steer.errors.RefusalSteerError`) are printed as one line
with the fix and exit code 2; ``--debug`` shows the traceback instead. Usage errors print click's usual
usage/error lines and exit 2; Ctrl-C prints one line and exits 130.
"""

from __future__ import annotations

import logging
import sys

import typer

from .. import __version__
from ..errors import RefusalSteerError
from ._common import console, err_console, state

INTERRUPTED_MESSAGE = "interrupted; finished stages are kept and a rerun resumes from them"


class _Interrupted(Exception):
    """Ctrl-C inside a command, carried past typer to :func:`main` as an ordinary exception.

    Typer's ``_main`` (0.15 to 0.29 at least) turns a KeyboardInterrupt into ``Exit(130)``, and with
    ``standalone_mode=False`` an Exit is *returned* as the call's value, not raised: :func:`main` ignored
    it, so the process printed nothing and exited 0. Typer 0.12 turned it into ``Abort`` (exit 1, also
    silent). Converting it before typer sees it works the same with every version.
    """


class _RootGroup(typer.core.TyperGroup):
    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            raise _Interrupted() from exc


def _click_exception_types() -> tuple[type[BaseException], ...]:
    """Click's ClickException class(es): recent typer (0.26 on) bundles click as ``typer._click``, older typer uses ``click``."""
    import importlib

    types = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            types.append(importlib.import_module(module).ClickException)
        except ImportError:
            continue
    return tuple(types)


def _root_help() -> str:
    """The root --help: what the tool is, and the --steer short forms registered in this install."""
    from ..interventions import short_forms_help

    return ("Find, explain and steer refusal in chat language models through their activations.\n\n"
            f"--steer takes a short form ({short_forms_help()}), 'none', or a steer file (.yaml/.json); see docs/steers.md.")


app = typer.Typer(
    cls=_RootGroup,
    name="refusal-steer",
    help=_root_help(),
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
        rv = app(standalone_mode=False)
    except RefusalSteerError as exc:
        if state.debug:
            raise
        err_console.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        if exc.fix:
            err_console.print(f"[bold]fix:[/] {exc.fix}", highlight=False)
        sys.exit(2)
    except (_Interrupted, KeyboardInterrupt):
        err_console.print(INTERRUPTED_MESSAGE, highlight=False)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as exc:  # click usage errors and the like
        if isinstance(exc, _click_exception_types()):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    # Without standalone mode, typer/click *return* the code of a typer.Exit(code) instead of raising it.
    if isinstance(rv, int) and not isinstance(rv, bool) and rv != 0:
        sys.exit(rv)
