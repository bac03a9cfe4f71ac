#!/usr/bin/env bash
# Large messages through the daemon (issue 3's benchmark): one message file
# sent by `smtp-source -L -F FILE` -> smimefilter (encrypting for one
# certificate) -> `smtp-sink -L`, against `openssl cms -encrypt -stream
# -aes256` (S/MIME output, base64 like the daemon's) on the same file, in
# the same run. Reports wall times and peak RSS (VmHWM; the daemon is
# restarted for every size so each peak is its own).
#
#   bench/smime-large.sh [sizes in MB...]      default: 1 25 100
#
# Columns: direct_s is the same file sent straight to smtp-sink (the cost
# of moving it over LMTP at all); floor_s is smtp-sink taking in a message
# the size of the daemon's output (base64 adds a third) from the fastest
# sender at hand (bench/lmtp-send: smimefilter's own pipelined client), the
# least any relay to smtp-sink can take; added_s = filter_s - direct_s is
# what the daemon adds. Ratios: filter/openssl and added/openssl.
#
# Needs postfix (smtp-source, smtp-sink), openssl, GNU time; run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${*:-1 25 100}
PATH=$PATH:/usr/sbin
work=$(mktemp -d /tmp/smimefilter-large.XXXXXX)
chmod 755 "$work"
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
command -v /usr/bin/time >/dev/null || { echo "needs GNU time (apt-get install time)"; exit 1; }

# FILTER_BIN runs another build (an older commit's) for before/after figures.
if [ -n "${FILTER_BIN:-}" ]; then cp "$FILTER_BIN" "$work/smimefilter"; else go build -o "$work/smimefilter" ./cmd/smimefilter; fi
go build -o "$work/lmtp-send" ./bench/lmtp-send
mkdir "$work/certs"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$work/key.pem" -out "$work/certs/rcpt.pem" \
  -days 2 -subj "/CN=bench" -addext "subjectAltName=email:rcpt@example.org" \
  -addext "keyUsage=keyEncipherment" -addext "extendedKeyUsage=emailProtection" 2>/dev/null

sink=$work/sink.sock
smtp-sink -L -u postfix -c "unix:$sink" 64 >"$work/sink.log" 2>&1 &
for _ in $(seq 100); do [ -S "$sink" ] && break; sleep 0.05; done
chmod 666 "$sink"

cat >"$work/smimefilter.toml" <<EOT
[listen]
socket = "$work/filter.sock"
mode = "0666"
[limits]
max_message_size = 209715200
[deliver]
lmtp = "$sink"
[certs]
dir = "$work/certs"
[log]
level = "info"
EOT

now() { date +%s.%N; }
send() { # file socket -> seconds
  local t0 t1
  t0=$(now); smtp-source -L -m 1 -F "$1" -f a@example.net -t rcpt@example.org "unix:$2" >/dev/null; t1=$(now)
  echo "$t1 - $t0" | bc -l
}
# message FILE BYTES: a header and base64 text lines (LF; smtp-source -F
# sends each line with CRLF, openssl's default text mode does the same).
message() {
  { printf 'From: a@example.net\nTo: rcpt@example.org\nSubject: big\n\n'
    head -c $(($2 * 3 / 4)) /dev/urandom | base64 -w 76; } | head -c "$2" >"$1" || true # head closes the pipe early
}
printf '%-5s %9s %9s %9s %9s %10s %9s %10s %8s %8s\n' \
  MB direct_s floor_s filter_s added_s filter_RSS openssl_s openssl_RSS f/ossl add/ossl
for mb in $SIZES; do
  bytes=$((mb * 1000000))
  message "$work/msg.eml" "$bytes"
  message "$work/out-size.eml" $((bytes * 137 / 100))
  sed -i 's/$/\r/' "$work/out-size.eml" # lmtp-send sends the file as it is

  direct=$(send "$work/msg.eml" "$sink")
  floor=$("$work/lmtp-send" -socket "$sink" "$work/out-size.eml")

  "$work/smimefilter" -config "$work/smimefilter.toml" 2>"$work/filter.log" &
  pid=$!
  for _ in $(seq 100); do [ -S "$work/filter.sock" ] && break; sleep 0.05; done
  filter=$(send "$work/msg.eml" "$work/filter.sock")
  rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  kill -TERM "$pid"; wait "$pid" || true
  if grep -q "code=250" "$work/filter.log"; then :; else echo "no 250 in the daemon's log:"; cat "$work/filter.log"; exit 1; fi

  /usr/bin/time -f '%e %M' -o "$work/time" openssl cms -encrypt -stream -aes256 \
    -in "$work/msg.eml" -out /dev/null "$work/certs/rcpt.pem"
  read -r ossl ossl_rss <"$work/time"
  added=$(echo "$filter - $direct" | bc -l)
  printf '%-5s %9.3f %9.3f %9.3f %9.3f %7.1fMiB %9.2f %7.1fMiB %8s %8s\n' "$mb" "$direct" "$floor" "$filter" "$added" \
    "$(echo "$rss/1024" | bc -l)" "$ossl" "$(echo "$ossl_rss/1024" | bc -l)" \
    "$(awk -v f="$filter" -v o="$ossl" 'BEGIN { if (o > 0) printf "%.2f", f / o; else print "-" }')" \
    "$(awk -v f="$added" -v o="$ossl" 'BEGIN { if (o > 0) printf "%.2f", f / o; else print "-" }')"
done
