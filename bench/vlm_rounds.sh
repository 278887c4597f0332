# Sourced by the VLM benchmarks (run_vlm.sh, run_vlm_tiled.sh,
# run_vlm_video.sh) once MODEL and RUNS are set: the settings they share,
# the file their JSON lines go to ($out), and their two interleaved rounds.
PY=${PY:-$HOME/.venvs/glimpse-dev/bin/python}
THREADS=${THREADS:-2}
IDLE_WAIT_S=${IDLE_WAIT_S:-180}
out=${KEEP:-$(mktemp)}
: >"$out"

. bench/quiet.sh

# two_rounds BIN SCRIPT [ARGS...]: target/release/BIN and `SCRIPT --run ...
# --generate` on $MODEL, both given ARGS, twice; interleaved so that slow
# phases of a noisy machine hit both sides.
two_rounds() {
  local bin=$1 script=$2 round
  shift 2
  for round in 1 2; do
    wait_idle
    RAYON_NUM_THREADS=$THREADS "target/release/$bin" --model "$MODEL" --runs "$RUNS" "$@" | tee -a "$out"
    wait_idle
    "$PY" "$script" --run "$MODEL" --threads "$THREADS" --runs "$RUNS" "$@" --generate 2>/dev/null \
      | tee -a "$out"
  done
}
