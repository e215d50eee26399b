"""`python benchmarks/bench_efficiency.py ...` = `dmgin bench efficiency ...`: the benchmark lives in
`dmgin_tf.bench.efficiency`, so an installed package has it too."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dmgin_tf.bench.efficiency import main  # noqa: E402

if __name__ == "__main__":
    from dmgin_tf.cli.main import run_script
    sys.exit(run_script(main))
