#!/usr/bin/env bash
# LMTP relay overhead: smtp-source -L -> smimefilter -> smtp-sink -L against
# smtp-source -L -> smtp-sink -L, measured in the same run (issue 2's
# benchmark; figures go to BENCHMARKS.md as ratios).
#
#   bench/lmtp-relay.sh [messages] [rounds]
#
# Needs postfix (smtp-source, smtp-sink) and Go; run as root (smtp-sink drops
# to the postfix user). Prints one line per case: direct msgs/s, via
# smimefilter msgs/s, ratio. MODE=encrypt gives every recipient a
# certificate, so the filter path also S/MIME-encrypts. SIZES and SESSIONS
# narrow the cases (defaults "1024 102400" and "1 4"); SOURCE_FLAGS are
# added to every smtp-source (e.g. -d: keep connections, as Postfix does).
# FILTER_ENV is put in the daemon's environment (e.g. GOMAXPROCS=1);
# FILTER_BIN runs a binary built elsewhere (another commit) instead of this
# tree. The last columns are each process's CPU time (user + system) per
# message: smtp-sink and the daemon from /proc, smtp-source from bash's time.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-5000}
ROUNDS=${2:-3}
MODE=${MODE:-plaintext}
SIZES=${SIZES:-1024 102400}
SESSIONS=${SESSIONS:-1 4}
PATH=$PATH:/usr/sbin
work=$(mktemp -d /tmp/smimefilter-bench.XXXXXX)
chmod 755 "$work"
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

if [ -n "${FILTER_BIN:-}" ]; then
  cp "$FILTER_BIN" "$work/smimefilter"
else
  go build -o "$work/smimefilter" ./cmd/smimefilter
fi

sink=$work/sink.sock
smtp-sink -L -u postfix -c "unix:$sink" 256 >"$work/sink.log" 2>&1 &
spid=$!
for _ in $(seq 100); do [ -S "$sink" ] && break; sleep 0.05; done
chmod 666 "$sink"

certs=""
if [ "$MODE" = encrypt ]; then
  mkdir "$work/certs"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout "$work/key.pem" -out "$work/certs/rcpt.pem" \
    -days 2 -subj "/CN=bench" -addext "subjectAltName=email:rcpt@example.org" \
    -addext "keyUsage=keyEncipherment" -addext "extendedKeyUsage=emailProtection" 2>/dev/null
  certs="[certs]
dir = \"$work/certs\""
fi
cat >"$work/smimefilter.toml" <<EOT
[listen]
socket = "$work/filter.sock"
mode = "0666"
[deliver]
lmtp = "$sink"
max_idle = 8
max_connections = 16
max_transactions = 100000
[policy]
missing_certificate = "plaintext"
$certs
[log]
level = "warn"
EOT
env ${FILTER_ENV:-} "$work/smimefilter" -config "$work/smimefilter.toml" 2>"$work/filter.log" &
fpid=$!
for _ in $(seq 100); do [ -S "$work/filter.sock" ] && break; sleep 0.05; done

ticks() { # a process's user + system time so far, in clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat"
}
hz=$(getconf CLK_TCK)
per_msg() { echo "$1" | awk -v n="$N" -v hz="$hz" '{printf "%.0f", $1 * 1000000 / hz / n}'; }

# run target sessions size: sets rate (msgs/s) and the CPU time per message
# in µs of smtp-source (src), smtp-sink (snk) and the daemon (dmn).
run() {
  local t0 t1 s0 f0 tf
  s0=$(ticks "$spid"); f0=$(ticks "$fpid")
  t0=$(date +%s.%N)
  tf=$( { TIMEFORMAT='%3U %3S'; time smtp-source -L ${SOURCE_FLAGS:-} -s "$2" -m "$N" -l "$3" \
    -f sender@example.net -t rcpt@example.org "unix:$1" >/dev/null 2>&1; } 2>&1 )
  t1=$(date +%s.%N)
  rate=$(echo "$N / ($t1 - $t0)" | bc -l)
  src=$(echo "$tf" | awk -v n="$N" '{printf "%.0f", ($1 + $2) * 1000000 / n}')
  snk=$(per_msg "$(($(ticks "$spid") - s0))")
  dmn=$(per_msg "$(($(ticks "$fpid") - f0))")
}

echo "# CPU columns: µs per message (user + system) of smtp-source, smtp-sink and smimefilter"
printf '%-8s %-8s %-6s %10s %10s %6s | %-12s | %-16s\n' size sessions round direct via-filter ratio 'direct: src snk' 'via: src snk dmn'
for size in $SIZES; do
  for sessions in $SESSIONS; do
    for r in $(seq "$ROUNDS"); do
      run "$sink" "$sessions" "$size"
      d=$rate dsrc=$src dsnk=$snk
      run "$work/filter.sock" "$sessions" "$size"
      printf '%-8s %-8s %-6s %10.0f %10.0f %6.2f | %5s %6s | %5s %5s %5s\n' "$size" "$sessions" "$r" "$d" "$rate" \
        "$(echo "$rate / $d" | bc -l)" "$dsrc" "$dsnk" "$src" "$snk" "$dmn"
    done
  done
done
if grep -q "level=ERROR" "$work/filter.log"; then
  echo "smimefilter logged errors:"; grep "level=ERROR" "$work/filter.log" | head
  exit 1
fi
