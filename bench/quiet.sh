# Sourced by the bench scripts: waiting for a quiet machine. Others' builds
# share these 2 cores, and a benchmark run beside them measures nothing.

# busy and total jiffies of all CPUs (idle, iowait and steal count as not busy)
cpu_jiffies() {
  local _c u n s i w q sq st
  read -r _c u n s i w q sq st _ </proc/stat
  echo "$((u + n + s + q + sq)) $((u + n + s + i + w + q + sq + st))"
}

# Wait (at most IDLE_WAIT_S seconds) until the machine is under 10% busy.
wait_idle() {
  local waited=0 b0 t0 b1 t1
  while ((waited < IDLE_WAIT_S)); do
    read -r b0 t0 < <(cpu_jiffies); sleep 2; read -r b1 t1 < <(cpu_jiffies)
    (((b1 - b0) * 10 <= (t1 - t0))) && return 0
    sleep 8; waited=$((waited + 10))
  done
  echo "machine still busy after ${IDLE_WAIT_S}s, measuring anyway" >&2
}
