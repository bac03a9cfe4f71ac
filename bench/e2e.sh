#!/usr/bin/env bash
# End-to-end throughput: smtp-source -> Postfix -> smimefilter -> Dovecot
# (contrib/postfix/transport, every message encrypted) against
# smtp-source -> Postfix -> Dovecot, in the same run, with 1 KiB and
# 100 KiB messages, each timed until all messages are in the Maildir and the
# Postfix queue is empty. Prints msgs/s for both paths and the ratio.
#
#   bench/e2e.sh [messages] [rounds] [sessions]
#
# Needs root, postfix, dovecot-core, dovecot-lmtpd, openssl and Go. The
# daemons run from temp dirs (internal/mailstack); nothing system-wide is
# touched. The machines are noisy: compare the ratio, not the rates.
set -euo pipefail
cd "$(dirname "$0")/.."
export SMIMEFILTER_BENCH_N=${1:-1000}
export SMIMEFILTER_BENCH_ROUNDS=${2:-3}
export SMIMEFILTER_BENCH_SESSIONS=${3:-4}
export PATH=$PATH:/usr/sbin
go test -count=1 -timeout 60m -run '^TestBenchmarkE2E$' -v ./e2e |
  grep -vE '^(=== RUN|--- PASS|PASS$|ok )'
