#!/usr/bin/env bash
# Fan-out: one message to many recipients, each with their own certificate,
# smtp-source -> Postfix -> smimefilter -> Dovecot (contrib/postfix/transport)
# against smtp-source -> Postfix -> Dovecot, in the same run (BenchmarkFanout
# in e2e/fanout_bench_test.go, BenchmarkE2E's harness). Each round is one `go test` process with
# fresh daemons, the direct path first and then the filter path, so that the
# two alternate. Prints per round and case: msgs/s and seconds until the
# queue was empty for both paths, the ratio, Postfix's status=deferred lines
# (0: every recipient delivered in the first attempt) and the daemon's CPU
# time (user + system) per message.
#
#   bench/fanout.sh [messages] [rounds]
#
# SIZES (default "10240 1048576") and RCPTS (recipients per message, default
# "20") are space-separated lists; SESSIONS is smtp-source's (default 4).
# FILTER_BIN runs a binary built elsewhere (another commit) instead of this
# tree's; FILTER_CONFIG adds daemon settings, "section.key=value" separated by
# spaces (e.g. "limits.max_copies=20 deliver.max_connections=24");
# FILTER_ENV is put in the daemon's environment only (e.g. GOMAXPROCS=1).
# RAW=FILE appends go test's own output to FILE as it comes.
#
# Needs root, postfix, dovecot-core, dovecot-lmtpd, openssl and Go; nothing
# system-wide is touched. The machines are noisy: compare the ratio, not the
# rates. The harness retries deferred mail after about a second
# (queue_run_delay, minimal_backoff_time = 1s), so deferrals show as time.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-20}
ROUNDS=${2:-3}
export SMIMEFILTER_BENCH_SIZES=${SIZES:-10240 1048576}
export SMIMEFILTER_BENCH_RCPTS=${RCPTS:-20}
export SMIMEFILTER_BENCH_SESSIONS=${SESSIONS:-4}
export SMIMEFILTER_BENCH_BIN=${FILTER_BIN:-}
export SMIMEFILTER_BENCH_CONFIG=${FILTER_CONFIG:-}
export SMIMEFILTER_DAEMON_ENV=${FILTER_ENV:-}
export PATH=$PATH:/usr/sbin

printf '%-8s %-6s %-6s | %8s %7s | %8s %7s | %6s | %-15s | %s\n' size rcpts round \
  direct 's' filter 's' ratio 'deferred d / f' 'daemon ms/msg'
status=0
for r in $(seq "$ROUNDS"); do
  out=$(go test -run '^$' -bench '^BenchmarkFanout$' -benchtime "${N}x" -count 1 -timeout 60m ./e2e |
    tee -a "${RAW:-/dev/null}") || status=1
  # Lines look like: BenchmarkFanout/size=10240/rcpts=20/filter-2  20  1.2e+08 ns/op
  #   3.1 daemon-ms/msg  0 deferred  8.2 msgs/s  2.4 s-to-empty
  echo "$out" | awk -v round="$r" '
    /msgs\/s/ {
      split($1, p, "/"); size = substr(p[2], 6); rc = substr(p[3], 7); path = p[4]; sub(/-[0-9]+$/, "", path)
      k = size SUBSEP rc
      if (!(k in seen)) { seen[k] = 1; order[++n] = k }
      for (i = 2; i < NF; i++) v[k, path, $(i+1)] = $i
    }
    END {
      for (j = 1; j <= n; j++) {
        split(order[j], kk, SUBSEP); k = order[j]
        d = v[k, "direct", "msgs/s"]; f = v[k, "filter", "msgs/s"]
        printf "%-8s %-6s %-6s | %8.1f %7.2f | %8.1f %7.2f | %6.2f | %6d / %-6d | %.1f\n", kk[1], kk[2], round,
          d, v[k, "direct", "s-to-empty"], f, v[k, "filter", "s-to-empty"], (d > 0 ? f / d : 0),
          v[k, "direct", "deferred"], v[k, "filter", "deferred"], v[k, "filter", "daemon-ms/msg"]
      }
    }'
  echo "$out" | grep -E '^(FAIL|---|panic)' || true
done
exit $status
