#!/usr/bin/env bash
# End-to-end throughput: smtp-source -> Postfix -> smimefilter -> Dovecot
# (contrib/postfix/transport, every message encrypted) against
# smtp-source -> Postfix -> Dovecot, in the same run, with 1 KiB and
# 100 KiB messages, each timed until all messages are in the Maildir and the
# Postfix queue is empty (BenchmarkE2E in e2e/bench_test.go). Prints msgs/s
# for both paths and the ratio, per round.
#
#   bench/e2e.sh [messages] [rounds] [sessions]
#
# Needs root, postfix, dovecot-core, dovecot-lmtpd, openssl and Go. The
# daemons run from temp dirs (internal/mailstacktest); nothing system-wide is
# touched. The machines are noisy: compare the ratio, not the rates.
# FILTER_ENV is put in the daemon's environment only (e.g. GOMAXPROCS=1).
# SMIMEFILTER_BENCH_BIN=PATH runs another smimefilter binary (e.g. an older
# commit's build) in the filter path, for before/after figures.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
ROUNDS=${2:-3}
export SMIMEFILTER_BENCH_SESSIONS=${3:-4}
export SMIMEFILTER_DAEMON_ENV=${FILTER_ENV:-}
export PATH=$PATH:/usr/sbin
out=$(go test -run '^$' -bench '^BenchmarkE2E$' -benchtime "${N}x" -count "$ROUNDS" -timeout 60m ./e2e)
# Lines look like: BenchmarkE2E/size=1024/direct-2  1000  2.9e+06 ns/op  345.1 msgs/s
echo "$out" | awk -v s="$SMIMEFILTER_BENCH_SESSIONS" '
  /msgs\/s/ {
    split($1, p, "/"); size = substr(p[2], 6); path = p[3]; sub(/-[0-9]+$/, "", path)
    for (i = 1; i <= NF; i++) if ($(i+1) == "msgs/s") rate = $i
    if (path == "direct") { d[size, ++nd[size]] = rate } else { f[size, ++nf[size]] = rate }
  }
  END {
    printf "%-8s %-8s %-6s %12s %12s %7s\n", "size", "sessions", "round", "direct", "via-filter", "ratio"
    for (size in nd) for (r = 1; r <= nd[size]; r++)
      printf "%-8s %-8s %-6d %12.0f %12.0f %7.2f\n", size, s, r, d[size, r], f[size, r], f[size, r] / d[size, r]
  }'
echo "$out" | grep -E '^(FAIL|---)' || true
