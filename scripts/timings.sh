# Sourced by the evaluation scripts after OUT is set: `timed NAME COMMAND...` runs the command and adds its
# wall time to $OUT/timings.md. Every invocation adds its rows under the time it started, so a run that was
# stopped and continued keeps the time of the steps done before the stop (a step killed midway adds none).
mkdir -p "$OUT"
[ -f "$OUT/timings.md" ] || printf '| step | seconds | invocation started (UTC) |\n|---|---:|---|\n' > "$OUT/timings.md"
invocation_started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
timed() {
  local name=$1 began=$SECONDS
  shift
  "$@"
  printf '| %s | %d | %s |\n' "$name" $((SECONDS - began)) "$invocation_started" >> "$OUT/timings.md"
}
