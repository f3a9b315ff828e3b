#!/usr/bin/env bash
# The two-regime report (docs/regimes.md): every number there comes from these
# commands (2 CPU cores, about 75 minutes in all). Run folders go to $OUT (default runs/regimes);
# tables, probes and figures to docs/regimes/. Each step can be rerun alone: compare --resume
# reuses finished runs and the sweep continues its study.
set -euo pipefail
OUT=${OUT:-runs/regimes}
DOCS=docs/regimes
URI="sqlite:///$(pwd)/$OUT/mlflow.db"
mkdir -p "$OUT" "$DOCS"
step=${1:-all}

if [[ $step == all || $step == probes ]]; then
  # the probe: can the critic rank a test question's answers better than majority vote?
  tempo-bench probe --preset toy --out $DOCS/probe_toy.json
  tempo-bench probe --preset toy --set critic.warmup_epochs=0 --out $DOCS/probe_toy_raw_verdict.json
  tempo-bench probe --preset toy --set critic.head_init=random --out $DOCS/probe_toy_value_head.json
  tempo-bench probe --preset toy --set task.labeled_chain_fraction=0.5 --out $DOCS/probe_toy_trigger.json
  tempo-bench probe --preset toy --set task.test_digits=[4] --out $DOCS/probe_toy_4digit.json
  tempo-bench probe --preset toy-symmetric --out $DOCS/probe_toy_symmetric.json
fi
if [[ $step == all || $step == verifier ]]; then
  tempo-bench compare --preset toy --methods all --seeds 0,1,2,3,4 --out "$OUT" --resume \
    --table $DOCS/toy.md --figures $DOCS/toy
fi
if [[ $step == all || $step == sweep ]]; then
  tempo-bench sweep sweeps/recal_interval.yaml --workers 2 --out "$OUT" --quiet
  tempo-bench figures --experiment sweep-recal-interval --tracking-uri "$URI" --out $DOCS/sweep
fi
if [[ $step == all || $step == trigger ]]; then
  tempo-bench compare --preset toy --set task.labeled_chain_fraction=0.5 --experiment compare-toy-trigger \
    --methods standard_ttt,fixed_critic,online_critic,tempo,labeled_rlvr --seeds 0,1,2,3,4 --out "$OUT" --resume \
    --table $DOCS/toy_trigger.md --figures $DOCS/toy_trigger
fi
if [[ $step == all || $step == symmetric ]]; then
  # the core methods and labeled RLVR x 5 seeds, every other method x 3; the table and figures
  # count every finished run of the experiment
  tempo-bench compare --preset toy-symmetric --methods standard_ttt,fixed_critic,online_critic,tempo,labeled_rlvr \
    --seeds 0,1,2,3,4 --out "$OUT" --resume
  tempo-bench compare --preset toy-symmetric --methods empo,oracle,self_certainty,entropy_min,random_reward \
    --seeds 0,1,2 --out "$OUT" --resume
  tempo-bench figures --experiment compare-toy-symmetric --tracking-uri "$URI" --out $DOCS/toy_symmetric
fi
if [[ $step == all || $step == settings ]]; then
  # more knob settings for the gain-versus-gap figure (TEMPO and standard TTT only)
  tempo-bench compare --preset toy --set task.test_digits=[4] --experiment compare-toy-4digit \
    --methods standard_ttt,tempo --seeds 0,1,2 --out "$OUT" --resume
  # the verifier's knowledge not read out: a fresh value head on its backbone (probe: 0.567)
  tempo-bench compare --preset toy --set critic.head_init=random --experiment compare-toy-value-head \
    --methods standard_ttt,tempo --seeds 0,1,2 --out "$OUT" --resume
  # from another folder: in the repository root, `python -m` would import the source tree's
  # tempo_bench, which lacks the installed tempo_bench.analysis (a non-editable install)
  (docs="$(pwd)/$DOCS" && cd "$(mktemp -d)" && python -m tempo_bench.analysis.regimes --tracking-uri "$URI" --out "$docs")
fi
if [[ $step == demo ]]; then
  # the README's first command, timed (its figures and table committed under docs/regimes/demo)
  rm -rf runs/demo
  /usr/bin/time -f "demo: %e s wall" tempo-bench compare --preset toy --seeds 0 --out runs/demo \
    --figures $DOCS/demo --table $DOCS/demo/table.md
fi
