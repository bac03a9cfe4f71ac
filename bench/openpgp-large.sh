#!/usr/bin/env bash
# Large messages through the daemon, PGP/MIME against S/MIME (issue 13's
# benchmark): one message file sent by `smtp-source -L -F FILE` ->
# smimefilter -> `smtp-sink -L`, once to a recipient whose only key is an
# OpenPGP key (GnuPG-made, RSA 3072 as `gpg --quick-gen-key` makes by
# default), once to one with an S/MIME certificate (RSA 2048), and, on the
# same file in the same run, `gpg --encrypt --armor` (as shipped: ZLIB
# compression) and `gpg -z 0` (no compression, like the daemon) and
# `sq encrypt` (armored, no compression). Reports wall times and peak RSS
# (VmHWM; the daemon is restarted for every case so each peak is its own).
#
#   bench/openpgp-large.sh [sizes in MB...]      default: 1 100
#
# Needs postfix (smtp-source, smtp-sink), gpg, sq, openssl, GNU time; run as
# root. Nothing system-wide is touched; the GnuPG home is a temporary one.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${*:-1 100}
PATH=$PATH:/usr/sbin
work=$(mktemp -d /tmp/smimefilter-pgp-large.XXXXXX)
chmod 755 "$work"
export GNUPGHOME=$work/gnupg
trap 'gpgconf --kill all 2>/dev/null || true; kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
command -v /usr/bin/time >/dev/null || { echo "needs GNU time (apt-get install time)"; exit 1; }

if [ -n "${FILTER_BIN:-}" ]; then cp "$FILTER_BIN" "$work/smimefilter"; else go build -o "$work/smimefilter" ./cmd/smimefilter; fi
mkdir -m 700 "$GNUPGHOME"
mkdir "$work/pgp" "$work/smime"
gpg --batch --passphrase '' --quick-gen-key 'Bench <rcpt@example.org>' default default never 2>/dev/null
gpg --armor --export rcpt@example.org >"$work/pgp/rcpt.asc"
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$work/key.pem" -out "$work/smime/rcpt.pem" \
  -days 2 -subj "/CN=bench" -addext "subjectAltName=email:rcpt@example.org" \
  -addext "keyUsage=keyEncipherment" -addext "extendedKeyUsage=emailProtection" 2>/dev/null

sink=$work/sink.sock
smtp-sink -L -u postfix -c "unix:$sink" 64 >"$work/sink.log" 2>&1 &
for _ in $(seq 100); do [ -S "$sink" ] && break; sleep 0.05; done
chmod 666 "$sink"

for kind in pgp smime; do
  cat >"$work/$kind.toml" <<EOT
[listen]
socket = "$work/filter.sock"
mode = "0666"
[limits]
max_message_size = 209715200
[deliver]
lmtp = "$sink"
[certs]
dir = "$work/$kind"
[log]
level = "info"
EOT
done

now() { date +%s.%N; }
send() { # file socket -> seconds
  local t0 t1
  t0=$(now); smtp-source -L -m 1 -F "$1" -f a@example.net -t rcpt@example.org "unix:$2" >/dev/null; t1=$(now)
  echo "$t1 - $t0" | bc -l
}
message() { # FILE BYTES: a header and base64 text lines, as smime-large.sh
  { printf 'From: a@example.net\nTo: rcpt@example.org\nSubject: big\n\n'
    head -c $(($2 * 3 / 4)) /dev/urandom | base64 -w 76; } | head -c "$2" >"$1" || true
}
# via KIND -> "seconds peak_KiB"
via() {
  "$work/smimefilter" -config "$work/$1.toml" 2>"$work/filter.log" &
  local pid=$! s rss
  for _ in $(seq 100); do [ -S "$work/filter.sock" ] && break; sleep 0.05; done
  s=$(send "$work/msg.eml" "$work/filter.sock")
  rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
  kill -TERM "$pid"; wait "$pid" || true
  grep -q "code=250" "$work/filter.log" || { echo "no 250 in the daemon's log:" >&2; cat "$work/filter.log" >&2; exit 1; }
  echo "$s $rss"
}
timed() { # command... -> "seconds peak_KiB"
  /usr/bin/time -f '%e %M' -o "$work/time" "$@" >/dev/null 2>&1
  cat "$work/time"
}
mib() { awk -v k="$1" 'BEGIN { printf "%.1fMiB", k / 1024 }'; }

printf '%-4s | %8s %9s | %8s %9s | %7s %9s | %7s %9s | %7s %9s | %s\n' MB \
  pgpmime_s RSS smime_s RSS gpg_s RSS gpg-z0_s RSS sq_s RSS 'pgpmime/smime pgpmime/gpg pgpmime/sq'
for mb in $SIZES; do
  message "$work/msg.eml" $((mb * 1000000))
  read -r p prss < <(via pgp)
  read -r s srss < <(via smime)
  read -r g grss < <(timed gpg --batch --trust-model always -r rcpt@example.org --armor --encrypt -o - "$work/msg.eml")
  read -r g0 g0rss < <(timed gpg --batch --trust-model always -z 0 -r rcpt@example.org --armor --encrypt -o - "$work/msg.eml")
  read -r q qrss < <(timed sq encrypt --compression none --recipient-cert "$work/pgp/rcpt.asc" "$work/msg.eml")
  printf '%-4s | %8.3f %9s | %8.3f %9s | %7.2f %9s | %7.2f %9s | %7.2f %9s | %s %s %s\n' "$mb" \
    "$p" "$(mib "$prss")" "$s" "$(mib "$srss")" "$g" "$(mib "$grss")" "$g0" "$(mib "$g0rss")" "$q" "$(mib "$qrss")" \
    "$(awk -v a="$p" -v b="$s" 'BEGIN { printf "%.2f", a / b }')" \
    "$(awk -v a="$p" -v b="$g" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')" \
    "$(awk -v a="$p" -v b="$q" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')"
done
