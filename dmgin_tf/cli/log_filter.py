"""Drops TensorFlow/XLA C++ log lines from this process's stderr (file descriptor 2).

TensorFlow's own C++ logging obeys `TF_CPP_MIN_LOG_LEVEL`, but XLA logs through Abseil,
which has no such switch and writes lines like

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:1712267574.801377  681831 service.cc:145] XLA service 0x... initialized ...

straight to fd 2. `install()` points fd 2 at a pipe and copies everything to the real
stderr except such lines (and TensorFlow's `2026-... : I/W/E tensorflow/...] ...` lines);
child processes inherit the filtered fd, so Beam workers and servers started by a
command are quiet too. Fatal (`F`) lines and everything else pass unchanged, partial
lines (progress bars) without delay.

Only the `dmgin` program calls it (`dmgin_tf.cli.main.main` run without an argv);
`--verbose` skips it.
"""
from __future__ import annotations

import atexit
import os
import re
import sys
import threading
from typing import Optional

# absl:   I0000 00:00:1712267574.801377  681831 service.cc:145] ...
# tsl:    2026-12-04 21:23:31.017147: E external/local_xla/xla/.../cuda_fft.cc:479] ...
LOG_LINE = re.compile(
    rb"^(?:[IWE]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [^\s\]]+:\d+\] "
    rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] [^\s\]]+:\d+\] "
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR)")
# A partial line that could still become a log line is held until its newline.
_MAYBE_LOG = re.compile(rb"^(?:[IWE]\d|\d{4}-|WARNING: All)")

_state: dict = {}


def is_log_line(line: bytes) -> bool:
    """True for a TensorFlow/XLA/Abseil C++ log line (not for fatal `F` lines)."""
    return bool(LOG_LINE.match(line))


def install() -> bool:
    """Starts filtering fd 2 (once per process). Returns False where fd 2 is unusable."""
    if _state:
        return True
    try:
        sys.stderr.flush()
        real = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
    except OSError:
        return False
    thread = threading.Thread(target=_pump, args=(read_end, real), name="dmgin-log-filter",
                              daemon=True)
    _state.update(real=real, thread=thread, pid=os.getpid())
    thread.start()
    atexit.register(uninstall)
    return True


def uninstall(timeout: float = 2.0) -> None:
    """Restores fd 2 and forwards what is still in the pipe (called at exit)."""
    if not _state or _state.get("pid") != os.getpid():
        return
    try:
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    os.dup2(_state["real"], 2)     # our write end closes: the pump sees EOF once children exit
    _state["thread"].join(timeout)
    _state.clear()


def _pump(read_end: int, real: int) -> None:
    pending = b""
    while True:
        try:
            chunk = os.read(read_end, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            if pending and not is_log_line(pending):
                _write(real, pending)
            return
        pending += chunk
        *lines, pending = pending.split(b"\n")
        out = b"".join(line + b"\n" for line in lines if not is_log_line(line))
        if pending and not _MAYBE_LOG.match(pending[:12]):
            out += pending          # a progress bar or a prompt: pass it on now
            pending = b""
        if out:
            _write(real, out)


def _write(fd: int, data: bytes) -> Optional[int]:
    try:
        while data:
            n = os.write(fd, data)
            data = data[n:]
    except OSError:
        return None
    return 0
