"""Quality benchmark: every model and ablation on one dataset (docs/benchmarks.md "Quality").

A thin script over `dmgin bench quality` (library: dmgin_tf/training/quality.py):

    python benchmarks/bench_quality.py --dataset taobao --data data/taobao-userbehavior
    python benchmarks/bench_quality.py --dataset movielens --data data/movielens-latest-small
    python benchmarks/bench_quality.py --dataset taobao --quick      # smoke run on the sample

Arguments are those of `dmgin bench quality --help`.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from dmgin_tf.cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", "quality"] + sys.argv[1:]))
