# Sourced by the bench scripts that count limits in the local Redis (127.0.0.1:6379): the
# Redis server is a dependency of the proxy under test like its upstream, so it goes on the
# load generator's core, not the proxy's. Left unpinned, the scheduler put it on the proxy's
# core (measured: 38k req/s unpinned, 42k pinned to cpu 1, one DP with a Redis limit).
#
#   redis_pin CPU      pin every thread of the local redis-server to CPU (when allowed)
#   redis_unpin        give them back the affinity they had (call from the EXIT trap)
REDIS_AFFINITY=()

redis_pin() {
  local pid tid
  for pid in $(pgrep -x redis-server 2>/dev/null); do
    for tid in /proc/"$pid"/task/*; do
      tid=${tid##*/}
      REDIS_AFFINITY+=("$tid:$(taskset -p -c "$tid" 2>/dev/null | awk -F': ' '{print $2}')")
      taskset -p -c "$1" "$tid" >/dev/null 2>&1 ||
        echo "note: cannot pin Redis thread $tid to cpu $1 (not allowed); its figures share the proxy's core" >&2
    done
  done
}

redis_unpin() {
  local entry
  for entry in "${REDIS_AFFINITY[@]}"; do
    [[ -n ${entry#*:} ]] && taskset -p -c "${entry#*:}" "${entry%%:*}" >/dev/null 2>&1 || true
  done
  REDIS_AFFINITY=()
}
