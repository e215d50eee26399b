"""`dmgin` commands are quiet by default: TensorFlow/absl logs and library warnings appear
only with `dmgin --verbose`."""
from __future__ import annotations

import os
import subprocess
import sys

_PROBE = r"""
import sys, warnings
from dmgin_tf.cli.common import configure_process
configure_process(verbose=sys.argv[1] == "verbose")
import os
print("TF_CPP_MIN_LOG_LEVEL=" + os.environ.get("TF_CPP_MIN_LOG_LEVEL", ""), file=sys.stderr)
import tensorflow as tf
from absl import logging as absl_logging
absl_logging.warning("NOISE-absl")
absl_logging.error("Execution %d failed.", 11)   # TFX's launcher; the pipeline runner reports it
absl_logging.error("REAL-absl-error")
tf.get_logger().warning("NOISE-tensorflow-logger")
warnings.warn("NOISE-deprecation", DeprecationWarning)
warnings.warn_explicit("NOISE-tf-userwarning", UserWarning, "x.py", 1, module="tensorflow.python.x")
# A finalizer error inside a library (TensorFlow's AtomicFunction.__del__ during garbage
# collection printed "Exception ignored in ..." with a traceback mid-pipeline) and one in
# user code, which stays visible.
def _finalizer(): pass
class _Lib:
    def __del__(self): raise TypeError("NOISE-finalizer")
_Lib.__del__.__module__ = "tensorflow.python.eager.polymorphic_function.atomic_function"
class _Ours:
    def __del__(self): raise TypeError("REAL-finalizer")
x = _Lib(); del x
y = _Ours(); del y
print("ours: done")
"""


def _run(mode: str) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS", "GRPC_VERBOSITY", "GLOG_minloglevel")}
    p = subprocess.run([sys.executable, "-c", _PROBE, mode], env=env, capture_output=True,
                       text=True, timeout=300, check=True)
    return p.stdout, p.stderr


def test_quiet_by_default_and_verbose_shows_logs():
    out, err = _run("quiet")
    assert out.strip() == "ours: done"
    assert "TF_CPP_MIN_LOG_LEVEL=2" in err
    assert "NOISE" not in err, err
    assert "Execution 11 failed" not in err and "REAL-absl-error" in err, err
    assert "REAL-finalizer" in err, err

    out, err = _run("verbose")
    assert out.strip() == "ours: done"
    for noise in ("NOISE-absl", "NOISE-tensorflow-logger", "NOISE-deprecation", "NOISE-tf-userwarning",
                  "Execution 11 failed", "REAL-absl-error", "NOISE-finalizer", "REAL-finalizer"):
        assert noise in err, (noise, err)


def test_cli_has_a_verbose_flag():
    from dmgin_tf.cli.main import build_parser
    args = build_parser().parse_args(["--verbose", "data", "stats", "x"])
    assert args.verbose is True
    assert build_parser().parse_args(["data", "stats", "x"]).verbose is False


_FILTERED = r"""
import os, subprocess, sys
from dmgin_tf.cli import log_filter
assert log_filter.install()
os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
os.write(2, b"I0000 00:00:1796419567.268788   23698 service.cc:145] XLA service initialized\n")
os.write(2, b"2026-12-04 21:23:31.017147: E external/local_xla/xla/cuda_fft.cc:479] Unable to register\n")
os.write(2, b"kept: ours\n")
subprocess.run([sys.executable, "-c", "import os; os.write(2, b'I0000 00:00:1.5 7 child.cc:1] noise\\nkept: child\\n')"])
print("progress 50%", end="\r", file=sys.stderr, flush=True)
raise ValueError("kept: the traceback")
"""


def test_log_filter_drops_cpp_log_lines_only():
    p = subprocess.run([sys.executable, "-c", _FILTERED], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    err = p.stderr
    for kept in ("kept: ours", "kept: child", "progress 50%", "ValueError: kept: the traceback"):
        assert kept in err, (kept, err)
    for dropped in ("absl::InitializeLog", "XLA service", "cuda_fft", "noise"):
        assert dropped not in err, (dropped, err)


def test_paths_are_shown_relative_to_the_working_directory(tmp_path, monkeypatch):
    from dmgin_tf.display import display_path
    monkeypatch.chdir(tmp_path)
    assert display_path(str(tmp_path / "runs" / "demo")) == os.path.join("runs", "demo")
    assert display_path("/elsewhere/x") == "/elsewhere/x"


def test_help_texts_keep_their_continued_command_lines():
    """A backslash at a line end in a (non-raw) module docstring joins the two lines, so
    `dmgin export --help` showed '[--version 3]         [--state-groups ...' as one."""
    import argparse
    import re

    from dmgin_tf.cli.main import build_parser

    def parsers(p):
        yield p
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)
    seen = 0
    for p in parsers(build_parser()):
        for line in (p.description or "").splitlines():
            seen += 1
            assert not re.search(r"\S {8,}[\[-]", line), (p.prog, line)
    assert seen > 50


def test_ctrl_c_inside_beam_is_an_interruption_not_an_error(monkeypatch, capsys):
    """Beam re-raises a step's KeyboardInterrupt as "RuntimeError: KeyboardInterrupt
    [while running ...]": the CLI printed it as an error (exit 2)."""
    from dmgin_tf.cli import data as data_cli
    from dmgin_tf.cli.main import main

    def beam_step(args):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("KeyboardInterrupt [while running 'Read']")

    monkeypatch.setattr(data_cli, "_stats", beam_step)
    assert main(["data", "stats", "x"]) == 130
    assert capsys.readouterr().err.strip() == "dmgin data: interrupted"

    def plain_error(args):
        raise RuntimeError("boom")

    monkeypatch.setattr(data_cli, "_stats", plain_error)
    assert main(["data", "stats", "x"]) == 2


def test_ctrl_c_while_the_commands_load_is_an_interruption(monkeypatch, capsys):
    """Ctrl-C in the first seconds (the subcommands' imports) printed a traceback."""
    from dmgin_tf.cli import main as main_module

    def loading():
        raise KeyboardInterrupt
    monkeypatch.setattr(main_module, "build_parser", loading)
    assert main_module.main(["data", "stats", "x"]) == 130
    assert capsys.readouterr().err.strip() == "dmgin: interrupted"


def test_sigterm_stops_a_command_like_ctrl_c_with_status_143(tmp_path):
    """An orchestrator stopping a job sends SIGTERM: the process died at once, without
    a line or the command's cleanup (Ctrl-C gave both)."""
    import subprocess
    import sys
    code = ("import os, signal, sys, time\n"
            "from dmgin_tf.cli import data as data_cli, main as m\n"
            "def slow(args):\n"
            "    try:\n"
            "        os.kill(os.getpid(), signal.SIGTERM)\n"
            "        time.sleep(30)\n"
            "    finally:\n"
            "        print('cleanup ran', flush=True)\n"
            "data_cli._stats = slow\n"
            "sys.exit(m.main(['data', 'stats', 'x']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 143, proc.stderr
    assert "cleanup ran" in proc.stdout
    assert proc.stderr.strip().splitlines()[-1] == "dmgin data: terminated (SIGTERM)"
    assert "Traceback" not in proc.stderr


def test_verbose_and_debug_are_accepted_after_the_command():
    """`dmgin data convert ... --debug` was "unrecognized arguments"."""
    import argparse
    from dmgin_tf.cli.main import build_parser
    parser = build_parser()
    assert parser.parse_args(["data", "stats", "X", "--debug"]).debug is True
    assert parser.parse_args(["--debug", "data", "stats", "X"]).debug is True
    args = parser.parse_args(["data", "stats", "X"])
    assert args.debug is False and args.verbose is False
    assert parser.parse_args(["serve", "--model-base-path", "m", "--verbose"]).verbose is True

    def leaves(p):
        subs = [a for a in p._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield p
        for a in subs:
            for child in {id(c): c for c in a.choices.values()}.values():
                yield from leaves(child)
    for leaf in leaves(parser):
        if leaf is not parser:
            flags = {s for a in leaf._actions for s in a.option_strings}
            assert {"--verbose", "--debug"} <= flags, leaf.prog
