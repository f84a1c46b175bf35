"""The one wrapper every command runs in (``bidl-train``, ``bidl-test``, ``bidl-compile``, ``bidl-run``,
``bidl-plan``, and their ``python -m`` forms): version checks, exit codes and one-line errors.

Exit codes: the int a ``main`` returns (0 for one that returns its results, e.g. train and test);
2 with one ``error:`` line for a bad config, value, flag or missing file (:data:`USAGE_ERRORS`; a
command may count them as plain failures instead); 1 with one ``error:`` line for any other failure;
130 on Ctrl-C or SIGTERM (a batch scheduler's stop behaves as Ctrl-C). ``--debug`` on the command
line shows the traceback instead. torch and Ray are checked before either is imported.
"""
from __future__ import annotations

import atexit
import os
import signal
import sys
from typing import Any, Callable, Optional, Sequence

from .versions import UnsupportedVersion, check_all

USAGE_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, IsADirectoryError,
                                                 NotADirectoryError, FloatingPointError)
PROJECT_PACKAGES = ("bidl_grid", "bidl_models", "compile", "bidl_runtime")


def one_line(e: BaseException) -> str:
    """An error as one line: its message with whitespace folded (this project's errors name the file,
    key, cell or flag); other exception types keep their name and point at ``--debug``."""
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, USAGE_ERRORS) or type(e).__module__.split(".")[0] in PROJECT_PACKAGES:
        return text
    return f"{type(e).__name__}: {text} (--debug shows the traceback)"


def stop_on_sigterm() -> None:
    """SIGTERM stops the command as Ctrl-C does (whatever it holds is cleaned up); call it again after
    something that installs its own handler (``ray.init``)."""
    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt
    try:
        signal.signal(signal.SIGTERM, stop)
    except ValueError:   # not the main thread
        pass


def run_command(main: Callable[[Optional[list[str]]], Any], argv: Optional[Sequence[str]] = None, *,
                usage_errors: tuple[type[BaseException], ...] = USAGE_ERRORS) -> int:
    """The exit code of ``main(argv)`` (see the module doc); ``usage_errors``: the errors that exit 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        check_all()
    except UnsupportedVersion as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    stop_on_sigterm()
    try:
        out = main(None if argv is None else list(argv))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        out = 130
    except Exception as e:  # noqa: BLE001 - every error is one line (--debug: the traceback)
        if "--debug" in args:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2 if isinstance(e, usage_errors) else 1
    finally:   # called from Python with arguments (not as a command): the caller's Ctrl-C and SIGTERM
        if argv is not None:   # handling come back (a teardown may have left them ignored)
            _restore(handlers)
    code = out if isinstance(out, int) and not isinstance(out, bool) else 0
    if code == 130 and argv is None:   # the command itself, interrupted: its exit code is 130 (see exit_now)
        exit_now(130)
    return code


def exit_now(code: int) -> None:
    """Exit with ``code`` at once, after the exit handlers (temporary dirs, a forked template, Ray's
    shutdown), without the interpreter's own shutdown. Used where that shutdown would change the exit:
    a daemon thread still inside C++ code (torch) aborts the process there, and an interrupt that landed
    inside an embedded ``PyRun_*`` call (one of them runs during torch's import) leaves CPython's
    "unhandled KeyboardInterrupt" flag set although it was handled, so the interpreter would end by
    SIGINT (exit -2) instead of with ``code``."""
    sys.stdout.flush()
    sys.stderr.flush()
    atexit._run_exitfuncs()
    os._exit(code)


def _restore(handlers: dict) -> None:
    """Put back signal handlers saved with ``signal.getsignal`` (those set outside Python stay as they are)."""
    for sig, handler in handlers.items():
        if handler is not None:
            try:
                signal.signal(sig, handler)
            except ValueError:   # not the main thread: it changed nothing there either
                pass
