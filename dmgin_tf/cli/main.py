"""`dmgin` command line: a thin layer over library functions.

Each subcommand lives in its own module `dmgin_tf/cli/<name>.py` exposing
`register(subparsers)`; handlers import heavy libraries (TensorFlow, Beam) lazily so
`dmgin --help` is fast.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# tf.keras = Keras 2 before anything imports TensorFlow; `main` adds quiet logging.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# Subcommand modules, in --help order.
COMMAND_MODULES = ("demo", "data", "encoder", "grouping", "examples", "train", "export",
                   "serve", "predict", "pipeline", "bench", "gpu")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dmgin", description="DMGIN lifelong-sequence CTR: data, training, TFX pipeline, serving.")
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow/absl/XLA logs and library warnings (hidden by default)")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error (also: DMGIN_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"dmgin_tf.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"dmgin_tf.cli.{name}":
                continue  # command not shipped in this build
            raise
        module.register(sub)
    _global_flags_after_the_command(parser)
    return parser


def _global_flags_after_the_command(parser: argparse.ArgumentParser, top: bool = True) -> None:
    """`--verbose` / `--debug` also after the (sub)command (`dmgin data convert ...
    --debug`, where people add them when a command fails): every leaf parser accepts
    them, without overriding a value given before the command."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for action in subs:
        for child in {id(p): p for p in action.choices.values()}.values():
            _global_flags_after_the_command(child, top=False)
    if not top and not subs:
        parser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                            help="as `dmgin --verbose`")
        parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                            help="as `dmgin --debug`")


def _version() -> str:
    from dmgin_tf import __version__
    return f"dmgin-tf {__version__}"


class Terminated(KeyboardInterrupt):
    """SIGTERM (an orchestrator stopping the job, `kill`): handled as Ctrl-C is — the
    command's cleanup runs, one line says so — with SIGTERM's exit status 143."""


def _terminate(signum, frame):
    raise Terminated()


def _stopped(prog: str, e: BaseException) -> int:
    if isinstance(e, Terminated):
        print(f"{prog}: terminated (SIGTERM)", file=sys.stderr)
        return 143
    print(f"{prog}: interrupted", file=sys.stderr)
    return 130


def main(argv: list[str] | None = None) -> int:
    import signal
    import threading
    previous = None
    if threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _main(argv)
    except KeyboardInterrupt as e:
        # Ctrl-C before a command runs (the subcommands' imports take seconds): no traceback.
        return _stopped("dmgin", e)
    finally:
        if previous is not None:         # called from Python: leave the caller's handler
            signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from dmgin_tf.cli.common import configure_process
    configure_process(verbose=args.verbose)
    if argv is None and not args.verbose:
        # Run as the `dmgin` program (not called from Python with an argv): also drop the
        # XLA/Abseil C++ log lines that no environment variable silences.
        from dmgin_tf.cli import log_filter
        log_filter.install()
    from dmgin_tf.config import ConfigError
    from dmgin_tf.errors import DmginError
    debug = args.debug or os.environ.get("DMGIN_DEBUG", "") not in ("", "0")
    try:
        result = args.func(args)
    except KeyboardInterrupt as e:
        return _stopped(f"dmgin {args.command}", e)
    except BrokenPipeError:
        # The reader went away (`dmgin data stats ... | head`): what it read was fine.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as e:  # every error: one line naming it, exit 2 (--debug: traceback)
        if debug and not _caused_by_interrupt(e):
            raise
        return _report(f"dmgin {args.command}", e, (DmginError, ConfigError))
    return int(result or 0)


def _report(prog: str, e: Exception, ours: tuple, debug_hint: str = "dmgin --debug ...") -> int:
    """An error that ended a command: "interrupted" (130) when it wraps a Ctrl-C (Beam
    re-raises a step's interrupt as its own error), else one line naming it (2)."""
    interrupt = _caused_by_interrupt(e)
    if interrupt is not None:
        return _stopped(prog, interrupt)
    print(f"{prog}: error: {_one_line(e, ours, debug_hint)}", file=sys.stderr)
    return 2


def _caused_by_interrupt(e: BaseException):
    """The KeyboardInterrupt (Ctrl-C, or `Terminated`) `e` was raised while handling, if
    its cause or context chain holds one (Beam re-raises a step's interrupt as a
    RuntimeError); else None."""
    seen = 0
    while e is not None and seen < 20:
        if isinstance(e, KeyboardInterrupt):
            return e
        e, seen = e.__cause__ or e.__context__, seen + 1
    return None


def run_script(fn, argv=None) -> int:
    """A benchmark script's `main(argv)` with the CLI's error handling: an error is one
    line on stderr naming it, exit 2 (`DMGIN_DEBUG=1` shows the traceback); Ctrl-C is
    "interrupted", exit 130."""
    from dmgin_tf.config import ConfigError
    from dmgin_tf.errors import DmginError
    prog = os.path.basename(sys.argv[0]) or "script"
    try:
        return int(fn(argv) or 0)
    except KeyboardInterrupt as e:
        return _stopped(prog, e)
    except Exception as e:  # noqa: BLE001 - reported in one line, as the CLI does
        if os.environ.get("DMGIN_DEBUG", "") not in ("", "0") and not _caused_by_interrupt(e):
            raise
        # The scripts' own argument checks raise ValueError with the flag in the message.
        return _report(prog, e, (DmginError, ConfigError, ValueError), "DMGIN_DEBUG=1 ...")


def _one_line(e: Exception, ours: tuple, debug_hint: str = "dmgin --debug ...") -> str:
    """Our errors as they are; OS errors with the path; anything else with its type and
    a pointer to the traceback switch (an unexpected error is a bug worth its traceback)."""
    if isinstance(e, ours):
        msg = str(e)
    elif isinstance(e, OSError) and e.filename is not None:
        msg = f"{e.filename}: {e.strerror or e}"
    elif isinstance(e, OSError):
        msg = str(e)
    else:
        msg = f"{type(e).__name__}: {e} (run '{debug_hint}' for the traceback)"
    return " ".join(msg.split()) or type(e).__name__


if __name__ == "__main__":
    sys.exit(main())
