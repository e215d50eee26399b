"""A short run of benchmarks/soak_serving.py: slow copies, a corrupt push, a killed and
restarted server — no failed request outside the kill window, no request over 1 s."""
import os
import sys

import pytest

BENCH_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks")


@pytest.mark.slow
def test_soak_serving_short(monkeypatch, capsys):
    monkeypatch.syspath_prepend(BENCH_DIR)
    import soak_serving
    rc = soak_serving.main(["--duration", "8", "--clients", "2", "--swap-every", "2",
                            "--corrupt-every", "2", "--copy-pause", "0.5"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "kill -9" in out and "corrupt v" in out and '"errors": {}' in out, out
