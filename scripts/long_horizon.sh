#!/usr/bin/env bash
# The long-horizon experiment (docs/long_horizon.md, issue 30): the four core methods and labeled
# RLVR, 3 seeds, 200 steps, an evaluation every 10 steps, in three settings: the verifier regime
# (preset toy), the symmetric regime (toy-symmetric) and a harder verifier setting with more
# headroom (toy with 4-digit test questions). About 2 hours on 2 CPU cores (two workers).
# Run folders go to $OUT (default runs/long); tables and figures to docs/long_horizon/. Each
# setting can be rerun alone (`scripts/long_horizon.sh verifier`); compare --resume reuses
# finished runs and resumes interrupted ones from their checkpoints.
set -euo pipefail
OUT=${OUT:-runs/long}
DOCS=docs/long_horizon
URI="sqlite:///$(pwd)/$OUT/mlflow.db"
mkdir -p "$OUT" "$DOCS"
step=${1:-all}
METHODS=standard_ttt,fixed_critic,online_critic,tempo,labeled_rlvr
LONG=(--set train.steps=200 --set eval.every=10 --methods $METHODS --seeds 0,1,2 --workers 2 --out "$OUT" --resume)

if [[ $step == all || $step == verifier ]]; then
  tempo-bench compare --preset toy --experiment long-toy "${LONG[@]}" \
    --table $DOCS/toy.md --figures $DOCS/toy
fi
if [[ $step == all || $step == symmetric ]]; then
  tempo-bench compare --preset toy-symmetric --experiment long-toy-symmetric "${LONG[@]}" \
    --table $DOCS/toy_symmetric.md --figures $DOCS/toy_symmetric
fi
if [[ $step == all || $step == harder ]]; then
  # the verifier regime on 4-digit test questions: the probe's gap was +0.31 there, and the
  # policy starts lower (more headroom than the oracle's 0.88 on toy)
  tempo-bench compare --preset toy --set task.test_digits=[4] --experiment long-toy-4digit "${LONG[@]}" \
    --table $DOCS/toy_4digit.md --figures $DOCS/toy_4digit
fi
if [[ $step == all || $step == analysis ]]; then
  # plateaus, exploitation, over-confidence and "the metric or the critic?" over the three settings;
  # from another folder, so that a non-editable install's tempo_bench.analysis is the one imported
  (docs="$(pwd)/$DOCS" && out="$(cd "$OUT" && pwd)" && cd "$(mktemp -d)" && python -m tempo_bench.analysis.long_horizon \
    --tracking-uri "$URI" --experiments long-toy,long-toy-symmetric,long-toy-4digit --out "$docs" &&
   # each critic run's starting and final critic on its starting and final answers (from its last checkpoint)
   python -m tempo_bench.analysis.critic_swap --tracking-uri "$URI" --out-root "$out" \
    --experiments long-toy,long-toy-symmetric,long-toy-4digit --out "$docs")
fi
