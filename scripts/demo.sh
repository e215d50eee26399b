#!/usr/bin/env bash
# README command 1: set up .venv (pinned stack) and run the main job: the TFX pipeline
# on the embedded real sample, the pushed model served over gRPC, one Predict answered.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL=2 PYTHONWARNINGS=ignore
exec .venv/bin/dmgin demo "$@"
