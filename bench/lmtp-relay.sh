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

go build -o "$work/smimefilter" ./cmd/smimefilter

sink=$work/sink.sock
smtp-sink -L -u postfix -c "unix:$sink" 256 >"$work/sink.log" 2>&1 &
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
"$work/smimefilter" -config "$work/smimefilter.toml" 2>"$work/filter.log" &
for _ in $(seq 100); do [ -S "$work/filter.sock" ] && break; sleep 0.05; done

rate() { # target sessions size -> msgs/s
  local t0 t1
  t0=$(date +%s.%N)
  smtp-source -L ${SOURCE_FLAGS:-} -s "$2" -m "$N" -l "$3" -f sender@example.net -t rcpt@example.org "unix:$1" >/dev/null
  t1=$(date +%s.%N)
  echo "$N / ($t1 - $t0)" | bc -l
}

printf '%-8s %-8s %-6s %12s %12s %7s\n' size sessions round direct via-filter ratio
for size in $SIZES; do
  for sessions in $SESSIONS; do
    for r in $(seq "$ROUNDS"); do
      d=$(rate "$sink" "$sessions" "$size")
      f=$(rate "$work/filter.sock" "$sessions" "$size")
      printf '%-8s %-8s %-6s %12.0f %12.0f %7.2f\n' "$size" "$sessions" "$r" "$d" "$f" "$(echo "$f / $d" | bc -l)"
    done
  done
done
if grep -q "level=ERROR" "$work/filter.log"; then
  echo "smimefilter logged errors:"; grep "level=ERROR" "$work/filter.log" | head
  exit 1
fi
