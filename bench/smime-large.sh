#!/usr/bin/env bash
# Large messages through the daemon (issue 3's benchmark): smtp-source -L ->
# smimefilter (encrypting) -> smtp-sink -L, against
# `openssl cms -encrypt -stream -aes256` on a file of the same size, in the
# same run. Reports wall time and the daemon's peak RSS (VmHWM; the daemon
# is restarted for every size so each peak is its own).
#
#   bench/smime-large.sh [sizes in MB...]      default: 1 25 100
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

go build -o "$work/smimefilter" ./cmd/smimefilter
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
printf '%-6s %14s %14s %12s %14s %12s %7s\n' MB direct_s filter_s filter_RSS openssl_s openssl_RSS ratio
for mb in $SIZES; do
  bytes=$((mb * 1000000))
  # The same content for openssl: a header and bytes lines of text.
  { printf 'From: a@example.net\r\nTo: rcpt@example.org\r\nSubject: big\r\n\r\n'
    head -c $((bytes * 3 / 4)) /dev/urandom | base64 -w 76 | sed 's/$/\r/'; } | head -c "$bytes" >"$work/msg.eml" || true # head closes the pipe early

  t0=$(now); smtp-source -L -m 1 -l "$bytes" -f a@example.net -t rcpt@example.org "unix:$sink" >/dev/null; t1=$(now)
  direct=$(echo "$t1 - $t0" | bc -l)

  "$work/smimefilter" -config "$work/smimefilter.toml" 2>"$work/filter.log" &
  pid=$!
  for _ in $(seq 100); do [ -S "$work/filter.sock" ] && break; sleep 0.05; done
  t0=$(now); smtp-source -L -m 1 -l "$bytes" -f a@example.net -t rcpt@example.org "unix:$work/filter.sock" >/dev/null; t1=$(now)
  filter=$(echo "$t1 - $t0" | bc -l)
  rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  kill -TERM "$pid"; wait "$pid" || true
  if grep -q "code=250" "$work/filter.log"; then :; else echo "no 250 in the daemon's log:"; cat "$work/filter.log"; exit 1; fi

  /usr/bin/time -f '%e %M' -o "$work/time" openssl cms -encrypt -stream -aes256 -binary -outform DER \
    -in "$work/msg.eml" -out /dev/null "$work/certs/rcpt.pem"
  read -r ossl ossl_rss <"$work/time"
  printf '%-6s %14.3f %14.3f %9.1fMiB %14.3f %9.1fMiB %7.2f\n' "$mb" "$direct" "$filter" "$(echo "$rss/1024" | bc -l)" \
    "$ossl" "$(echo "$ossl_rss/1024" | bc -l)" "$(awk -v f="$filter" -v o="$ossl" 'BEGIN { print (o > 0 ? f / o : 0) }')"
done
