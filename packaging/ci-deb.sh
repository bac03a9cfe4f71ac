#!/usr/bin/env bash
# packaging/ci-deb.sh - the Debian package, end to end: build, lintian,
# install, upgrade keeping a changed conffile, config check, unit
# verification, one message through the installed daemon by socket
# activation (without systemd as PID 1, on a socket with the unit's owner
# and mode) into a Maildir, S/MIME checked by decrypting it, the watchdog's
# self-check connecting to that socket, stop, purge, and nothing left
# behind.
#
# Installing and purging a package changes the machine (users, /etc, dpkg's
# database), so the test runs only where that harms nobody:
#  - in a throw-away root (preferred, whenever it can be made): private
#    mount, PID, UTS and IPC namespaces, and this machine's root file system
#    under an overlay whose writable layer is a tmpfs that vanishes with the
#    namespace; /run is fresh (no systemd is reachable, so the maintainer
#    scripts start nothing), so a running smimefilter, an
#    existing /etc/smimefilter and dpkg's database stay as they were. Tools
#    the test lacks are installed into that root only. Needs root, unshare
#    and overlayfs; it takes a second to set up, where a debootstrapped
#    Debian 12 root would take minutes of downloads.
#  - with CI=true on this machine itself (a throw-away CI machine), when no
#    throw-away root can be made. apt may then install but never remove a
#    package (--no-remove): a tool, or the package's Recommends (postfix),
#    that conflicts with an installed one (exim4, say) stops the test with
#    the name of what blocks it.
#  - otherwise it prints why it skipped and exits 0.
# So it touches an smimefilter installation it did not make (an installed
# package, or an /etc/smimefilter) only in the throw-away root, or with
# CI=true; without either it does not run at all.
#
# Needs go; installs what else is missing (dpkg-dev, lintian, systemd for
# systemd-analyze and systemd-socket-activate, swaks, openssl, adduser,
# socat to receive the daemon's sd_notify messages).
# Safe to re-run: it first removes what an earlier run left (its daemon, the
# installed package, its state directory). Logs stay in
# /tmp/smimefilter-ci-deb/logs. Exit status 0 only if every step passed (or
# the test was skipped).
set -uo pipefail

cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
export PATH="$PATH:/usr/local/go/bin:/usr/sbin:/sbin"

STATE=/tmp/smimefilter-ci-deb # fixed, so a re-run finds what a killed run left
SOCK=/run/smimefilter/lmtp.sock
NOTIFY_SOCK=$STATE/notify.sock
SYSUSER=_smimefilter
RCPT=alice@example.org
SECRET="ci-deb secret body $$-$RANDOM"
# "isolated" only inside the throw-away root: enter_isolated sets the
# variable and leaves the mark in its fresh /run.
ISOLATION_MARK=/run/smimefilter-ci-deb-throwaway-root
ROOT_KIND=
if [ "${SMIMEFILTER_CI_DEB_ROOT:-}" = isolated ] && [ -f "$ISOLATION_MARK" ]; then
	ROOT_KIND=isolated
fi

# --- where it runs ----------------------------------------------------------

# can_isolate: can a throw-away root be made here? (Prints why not.)
can_isolate() {
	[ "$(id -u)" -eq 0 ] || { echo "not root"; return 1; }
	command -v unshare >/dev/null && command -v chroot >/dev/null ||
		{ echo "unshare or chroot missing"; return 1; }
	local probe rc
	probe=$(mktemp -d /tmp/smimefilter-ci-probe.XXXXXX) || return 1
	unshare --mount --propagation private sh -ec '
		mount -t tmpfs tmpfs "$1"
		mkdir "$1/u" "$1/w" "$1/m"
		mount -t overlay overlay -o "lowerdir=/,upperdir=$1/u,workdir=$1/w" "$1/m"
		test -x "$1/m/bin/sh"' sh "$probe" 2>&1
	rc=$?
	rmdir "$probe"
	[ $rc -eq 0 ] || { echo "cannot mount an overlay of / in a mount namespace"; return 1; }
}

# enter_isolated: (in the new namespaces) build the throw-away root on the
# tmpfs at $1 and run this script again inside it.
enter_isolated() {
	local base=$1 root=$1/root here
	here=$(pwd -P)
	set -e
	mount -t tmpfs -o mode=0755 tmpfs "$base"
	mkdir "$base/upper" "$base/work" "$root"
	mount -t overlay overlay -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$root"
	mount -t proc proc "$root/proc"
	mount --rbind /dev "$root/dev"
	mount -t tmpfs -o mode=0755 tmpfs "$root/run"
	touch "$root$ISOLATION_MARK"
	# The source tree, wherever it is mounted, as a layer of its own:
	# what the build writes (dist/) stays in the throw-away root too.
	mkdir -p "$base/src-upper" "$base/src-work" "$root$here"
	mount -t overlay overlay -o "lowerdir=$here,upperdir=$base/src-upper,workdir=$base/src-work" "$root$here"
	# Go's build and module caches are shared: they are caches, and a
	# build without them takes minutes.
	local d
	for d in "${GO_CACHES[@]}"; do
		[ -d "$d" ] || continue
		mkdir -p "$root$d"
		mount --bind "$d" "$root$d"
	done
	# The logs are the one thing kept.
	mkdir -p "$STATE/logs" "$root$STATE/logs"
	mount --bind "$STATE/logs" "$root$STATE/logs"
	set +e
	exec chroot "$root" /usr/bin/env SMIMEFILTER_CI_DEB_ROOT=isolated \
		/bin/bash -c 'cd "$1" && exec packaging/ci-deb.sh' ci-deb "$here"
}

if [ "${1:-}" = --enter-isolated ]; then
	# Only as PID 1 of the namespaces made below, never on the machine.
	[ $$ -eq 1 ] || { echo "ci-deb: --enter-isolated is internal" >&2; exit 2; }
	read -ra GO_CACHES <<<"$(go env GOCACHE GOMODCACHE 2>/dev/null | tr '\n' ' ')"
	enter_isolated "$2"
	exit 1 # not reached unless a mount failed
fi

if [ "$ROOT_KIND" != isolated ]; then
	if why=$(can_isolate); then
		echo "ci-deb: running in a throw-away root (overlay over /, private namespaces)"
		base=$(mktemp -d /tmp/smimefilter-ci-root.XXXXXX) || exit 1
		unshare --mount --propagation private --pid --fork --uts --ipc \
			"$(pwd -P)/packaging/ci-deb.sh" --enter-isolated "$base"
		rc=$?
		rmdir "$base" 2>/dev/null
		exit $rc
	fi
	if [ "${CI:-}" != true ]; then
		echo "ci-deb: SKIP: the package test installs and purges smimefilter (user, group,"
		echo "ci-deb: /etc/smimefilter, dpkg state); it runs only in a throw-away root, which"
		echo "ci-deb: cannot be made here ($why), or with CI=true on a throw-away machine."
		exit 0
	fi
	echo "ci-deb: CI=true and no throw-away root ($why): testing on this machine"
	ROOT_KIND=machine
fi

DEB=""
DAEMON_PID=""
NOTIFY_PID=""
FAILED=0
declare -a SUMMARY=()
T0=$(date +%s.%N)

# --- helpers ----------------------------------------------------------------

log() { echo "ci-deb: $*"; }
fail() { echo "FAIL: $*"; return 1; }

# step NAME FUNCTION: run it with its output in a log; after a failure only
# steps marked "always" run (cleanup).
step() {
	local name=$1 fn=$2 mode=${3:-} t1 t2 rc
	local logf=$STATE/logs/$(printf '%02d' ${#SUMMARY[@]})-$name.log
	if [ "$FAILED" -ne 0 ] && [ "$mode" != always ]; then
		SUMMARY+=("SKIP  $name")
		return
	fi
	t1=$(date +%s.%N)
	log "--- $name"
	"$fn" >"$logf" 2>&1
	rc=$?
	t2=$(date +%s.%N)
	local dt
	dt=$(awk -v a="$t1" -v b="$t2" 'BEGIN { printf "%.1fs", b - a }')
	if [ $rc -eq 0 ]; then
		SUMMARY+=("PASS  $name ($dt)")
	else
		FAILED=1
		SUMMARY+=("FAIL  $name ($dt, log: $logf)")
		echo "ci-deb: step $name failed (exit $rc); last lines of $logf:"
		tail -n 60 "$logf" | sed 's/^/    /'
	fi
}

# apt_install [OPTION...] PKG...: apt-get install -y. On this machine
# (CI=true) nothing may be removed for it (installing postfix, a Recommends
# of the package, removes exim4, say): apt is asked first what it would
# remove, refuses (--no-remove) should that change in between, and the
# message names what is in the way. In the throw-away root a removal
# vanishes with the root.
apt_install() {
	if [ "$ROOT_KIND" != machine ]; then
		apt-get install -y "$@"
		return
	fi
	local a opts=() pkgs=() removed r
	for a in "$@"; do
		case $a in -*) opts+=("$a") ;; *) pkgs+=("$a") ;; esac
	done
	removed=$(apt_removals "${opts[@]}" "${pkgs[@]}")
	if [ -n "$removed" ]; then
		echo "ci-deb: NOT installing ${pkgs[*]}: apt would remove ${removed% } to make room" >&2
		for a in "${pkgs[@]}"; do
			r=$(apt_removals "${opts[@]}" "$a")
			[ -z "$r" ] || echo "ci-deb:   installing $a would remove ${r% }" >&2
		done
		echo "ci-deb: this test removes nothing from the machine; run it in a throw-away root" >&2
		echo "ci-deb: (as root, with unshare and overlayfs) or on a machine where those can go." >&2
		return 1
	fi
	apt-get install -y --no-remove "$@" || {
		echo "ci-deb: apt-get install ${pkgs[*]} failed (it removed nothing: --no-remove)" >&2
		return 1
	}
}

# apt_removals ARGS...: what apt-get install ARGS would remove.
apt_removals() {
	{ apt-get install -s "$@" 2>/dev/null || true; } | sed -n 's/^Remv \([^ ]*\).*/\1/p' | tr '\n' ' '
}

is_our_daemon() { # pid: is it a daemon (or activator) that a run of ours started?
	local cmd
	cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline") || return 1
	case $cmd in *"$STATE/smimefilter.toml"*) return 0 ;; esac
	return 1
}

stop_daemon() {
	local pid=$1
	is_our_daemon "$pid" || return 0
	kill -TERM "$pid" 2>/dev/null
	for _ in $(seq 1 100); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null
}

# --- steps ------------------------------------------------------------------

# installed_here: is smimefilter installed, or its configuration present?
installed_here() {
	dpkg-query -W -f='${Status}' smimefilter 2>/dev/null | grep -qv 'not-installed' ||
		[ -e /etc/smimefilter ]
}

prepare() {
	[ "$(id -u)" -eq 0 ] || fail "must run as root" || return 1
	# What an earlier, interrupted run may have left.
	if [ -f "$STATE/daemon.pid" ]; then
		stop_daemon "$(cat "$STATE/daemon.pid")"
	fi
	stop_notify
	if installed_here; then
		if [ "$ROOT_KIND" = isolated ]; then
			echo "an installation of this machine, seen in the throw-away root: purging it there only"
		elif [ -f "$STATE/installed" ]; then
			echo "purging the installation an earlier run of ci-deb.sh left"
		else
			# Only CI=true gets here (see "where it runs").
			echo "CI=true: purging an smimefilter installation ci-deb.sh did not make"
		fi
		apt-get purge -y smimefilter || return 1
		rm -f "$STATE/installed"
	fi
	rm -rf /run/smimefilter
	find "$STATE" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf {} + 2>/dev/null
	ensure_tools
}

# ensure_tools installs the packages of the tools the test lacks (in the
# throw-away root: into it only). Installed ones are not upgraded.
ensure_tools() {
	command -v go >/dev/null || fail "go not found" || return 1
	local tool pkg need=()
	for tool in dpkg-parsechangelog:dpkg-dev lintian:lintian systemd-analyze:systemd \
		systemd-socket-activate:systemd swaks:swaks openssl:openssl setpriv:util-linux \
		adduser:adduser socat:socat; do
		pkg=${tool#*:}
		command -v "${tool%%:*}" >/dev/null || need+=("$pkg")
	done
	[ ${#need[@]} -eq 0 ] && return 0
	echo "installing: ${need[*]}"
	apt-get update -q || return 1
	apt_install -q --no-install-recommends --no-upgrade $(printf '%s\n' "${need[@]}" | sort -u) ||
		return 1
}

build() {
	local out
	out=$(packaging/build-deb.sh) || return 1
	echo "$out"
	DEB=$(echo "$out" | tail -n 1)
	[ -f "$DEB" ] || fail "build-deb.sh did not produce $DEB"
	dpkg-deb --info "$DEB" && dpkg-deb --contents "$DEB"
}

reproducible() {
	local a b
	a=$(sha256sum <"$DEB")
	packaging/build-deb.sh >/dev/null || return 1
	b=$(sha256sum <"$DEB")
	echo "first build:  $a"
	echo "second build: $b"
	[ "$a" = "$b" ] || fail "two builds of the same tree differ"
}

run_lintian() {
	local out rc
	out=$(lintian --display-info --fail-on error,warning "$DEB" 2>&1)
	rc=$?
	out=$(echo "$out" | grep -v 'running with root privileges is not recommended')
	echo "$out"
	if grep -qE '^[EW]: ' <<<"$out"; then fail "lintian reports errors or warnings"; return 1; fi
	[ $rc -eq 0 ] || fail "lintian exited $rc"
}

install_pkg() {
	# Before installing: a run killed halfway leaves an installation that
	# the next run may then purge as its own.
	touch "$STATE/installed"
	apt_install "./$DEB" || return 1
	dpkg-query -W -f='${Status} ${Version}\n' smimefilter
	dpkg-query -W -f='${Status}' smimefilter | grep -q '^install ok installed$' ||
		fail "not installed" || return 1
	getent passwd "$SYSUSER" || fail "user $SYSUSER missing" || return 1
	getent group "$SYSUSER" || fail "group $SYSUSER missing" || return 1
	dpkg-query -W -f='${Conffiles}\n' smimefilter | grep -q '/etc/smimefilter/smimefilter.toml' ||
		fail "smimefilter.toml is not a conffile" || return 1
	[ -d /etc/smimefilter/certs ] || fail "/etc/smimefilter/certs missing" || return 1
	[ -L /etc/systemd/system/sockets.target.wants/smimefilter.socket ] ||
		fail "smimefilter.socket not enabled" || return 1
	local want
	want=$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)
	/usr/sbin/smimefilter version
	/usr/sbin/smimefilter version | grep -qx "smimefilter ${want%-*}" ||
		fail "smimefilter version does not print ${want%-*}"
}

upgrade_keeps_conffile() {
	# A later version of the same package, to upgrade to: dpkg must keep
	# the administrator's change to the conffile (unchanged in the package).
	local dir=$STATE/upgrade new
	rm -rf "$dir" && mkdir -p "$dir" || return 1
	dpkg-deb --raw-extract "$DEB" "$dir/root" || return 1
	sed -i 's/^Version: .*/&+ciupgrade1/' "$dir/root/DEBIAN/control"
	new=$dir/$(basename "$DEB" .deb)+ciupgrade1.deb
	dpkg-deb --root-owner-group --build "$dir/root" "$new" >/dev/null || return 1
	echo "# ci-deb: local change $$" >>/etc/smimefilter/smimefilter.toml
	apt_install "$new" || return 1
	dpkg-query -W -f='${Version}\n' smimefilter | grep -q 'ciupgrade1$' || fail "upgrade did not happen" || return 1
	grep -q "^# ci-deb: local change $$\$" /etc/smimefilter/smimefilter.toml ||
		fail "the upgrade replaced the changed conffile" || return 1
	[ ! -e /etc/smimefilter/smimefilter.toml.dpkg-new ] || fail "a .dpkg-new file was left" || return 1
	getent passwd "$SYSUSER" >/dev/null || fail "user lost on upgrade"
}

check_config() {
	/usr/sbin/smimefilter check -config /etc/smimefilter/smimefilter.toml || return 1
	# As the service's user, which is what matters under systemd.
	setpriv --reuid="$SYSUSER" --regid="$SYSUSER" --clear-groups \
		/usr/sbin/smimefilter check -config /etc/smimefilter/smimefilter.toml >/dev/null ||
		fail "check fails as user $SYSUSER"
}

verify_units() {
	local out man=yes
	# Documentation= is checked with man(1) when it exists (lintian pulls
	# in man-db).
	command -v man >/dev/null || man=no
	out=$(systemd-analyze verify --man=$man /lib/systemd/system/smimefilter.socket \
		/lib/systemd/system/smimefilter.service 2>&1) || { echo "$out"; fail "systemd-analyze verify"; return 1; }
	[ -z "$out" ] || { echo "$out"; fail "systemd-analyze verify printed warnings"; return 1; }
	echo "systemd-analyze verify: clean"
	# Exposure at most 1.0: --threshold (in tenths) makes the exit status
	# say so, and the figure printed is compared too.
	local rc exposure
	out=$(systemd-analyze security --offline=true --threshold=10 /lib/systemd/system/smimefilter.service 2>&1)
	rc=$?
	echo "$out" | tail -n 1
	[ $rc -eq 0 ] || { echo "$out"; fail "systemd-analyze security: exit $rc, exposure above 1.0"; return 1; }
	exposure=$(echo "$out" | sed -n 's/.*Overall exposure level for smimefilter.service: \([0-9.]*\).*/\1/p')
	[ -n "$exposure" ] || fail "no exposure figure in the output of systemd-analyze security" || return 1
	awk -v e="$exposure" 'BEGIN { exit !(e <= 1.0) }' || fail "exposure $exposure, want at most 1.0" || return 1
	# The daemon connects to its own socket for the watchdog's self-check,
	# so the socket must belong to the service's user.
	local user suser
	user=$(unit_value smimefilter.service User)
	suser=$(unit_value smimefilter.socket SocketUser)
	echo "service User=$user, socket SocketUser=$suser SocketGroup=$(unit_value smimefilter.socket SocketGroup) SocketMode=$(unit_value smimefilter.socket SocketMode)"
	[ -n "$user" ] && [ "$suser" = "$user" ] ||
		fail "SocketUser=$suser, want the service's User=$user: the watchdog could not greet its own socket"
}

# unit_value UNIT KEY: the last KEY= of the installed UNIT.
unit_value() {
	sed -n "s/^$2=//p" "/lib/systemd/system/$1" | tail -n 1
}

make_certificate() {
	mkdir -p "$STATE/certs" "$STATE/mail" || return 1
	cat >"$STATE/openssl.cnf" <<EOF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = Alice Example
[ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, keyEncipherment, digitalSignature
extendedKeyUsage = emailProtection
subjectAltName = email:$RCPT
subjectKeyIdentifier = hash
EOF
	openssl req -x509 -new -newkey rsa:2048 -nodes -days 2 -sha256 \
		-config "$STATE/openssl.cnf" -extensions ext \
		-keyout "$STATE/alice-key.pem" -out "$STATE/certs/alice.pem" 2>&1 || return 1
	chmod 0644 "$STATE/certs/alice.pem"
	chmod 0600 "$STATE/alice-key.pem"
	chmod 0755 "$STATE" "$STATE/certs"
	chown "$SYSUSER:$SYSUSER" "$STATE/mail"
	chmod 0700 "$STATE/mail"
	cat >"$STATE/smimefilter.toml" <<EOF
# ci-deb.sh: the installed daemon, delivering into a Maildir.
[listen]
socket = "$SOCK"

[deliver]
maildir = "$STATE/mail/%d/%n"

[certs]
dir = "$STATE/certs"

[policy]
missing_certificate = "reject"

[log]
level = "debug"
EOF
	setpriv --reuid="$SYSUSER" --regid="$SYSUSER" --clear-groups \
		/usr/sbin/smimefilter check -config "$STATE/smimefilter.toml" || return 1
	# Not piped into grep -q: under pipefail, grep's early exit is the
	# writer's SIGPIPE and fails the step.
	local out
	out=$(/usr/sbin/smimefilter check -config "$STATE/smimefilter.toml") || return 1
	grep -q "$RCPT" <<<"$out" || fail "check does not list the certificate for $RCPT"
}

start_activated() {
	mkdir -p /run/smimefilter && rm -f "$SOCK" "$NOTIFY_SOCK"
	# systemd's end of NOTIFY_SOCKET: the daemon, as its user, may send to
	# it. Datagrams are written one after another, without separators.
	socat -u "UNIX-RECV:$NOTIFY_SOCK,perm=0666" "OPEN:$STATE/notify.log,creat,trunc" \
		2>"$STATE/socat.log" </dev/null &
	NOTIFY_PID=$!
	echo "$NOTIFY_PID" >"$STATE/notify.pid"
	# systemd-socket-activate binds the socket and, at the first connection,
	# execs the command with LISTEN_FDS=1 and LISTEN_PID set to its own PID.
	# setpriv drops to the service user and execs again, so LISTEN_PID still
	# matches. WATCHDOG_USEC as WatchdogSec= would set it, but short: a
	# self-check every half second.
	systemd-socket-activate -l "$SOCK" -E NOTIFY_SOCKET="$NOTIFY_SOCK" -E WATCHDOG_USEC=1000000 \
		/usr/bin/setpriv --reuid="$SYSUSER" --regid="$SYSUSER" --clear-groups \
		/usr/sbin/smimefilter -config "$STATE/smimefilter.toml" \
		>"$STATE/daemon.log" 2>&1 </dev/null &
	DAEMON_PID=$!
	echo "$DAEMON_PID" >"$STATE/daemon.pid"
	for _ in $(seq 1 100); do
		if [ -S "$SOCK" ] && [ -S "$NOTIFY_SOCK" ]; then
			# Owner, group and mode as smimefilter.socket makes them
			# (the client below runs as root, which they do not stop).
			chown "$(unit_value smimefilter.socket SocketUser):$(unit_value smimefilter.socket SocketGroup)" "$SOCK" &&
				chmod "$(unit_value smimefilter.socket SocketMode)" "$SOCK" || return 1
			ls -l "$SOCK" "$NOTIFY_SOCK"
			return 0
		fi
		kill -0 "$DAEMON_PID" 2>/dev/null && kill -0 "$NOTIFY_PID" 2>/dev/null || break
		sleep 0.05
	done
	cat "$STATE/daemon.log" "$STATE/socat.log"
	fail "no socket at $SOCK or $NOTIFY_SOCK"
}

deliver_one() {
	swaks --protocol LMTP --socket "$SOCK" --timeout 30 \
		--helo ci-deb.example.test --from sender@example.net --to "$RCPT" \
		--header "Subject: ci-deb" --body "$SECRET" || fail "swaks failed" || return 1
	echo "--- daemon log"
	cat "$STATE/daemon.log"
	grep -q 'activated=true' "$STATE/daemon.log" ||
		fail "the daemon did not report the socket from activation"
}

check_delivered() {
	local dir=$STATE/mail/example.org/alice/new files f
	files=$(find "$dir" -type f 2>/dev/null)
	[ "$(echo "$files" | grep -c .)" -eq 1 ] || fail "want 1 message in $dir, got: $files" || return 1
	f=$files
	ls -l "$f"
	sed -n '1,/^\r\?$/p' "$f"
	grep -qi '^Content-Type: application/pkcs7-mime' "$f" ||
		fail "message is not application/pkcs7-mime" || return 1
	! grep -q "$SECRET" "$f" || fail "the body is readable in the stored message" || return 1
	# Decrypt it as a client would. (The daemon writes CRLF line ends.)
	sed '1,/^\r\?$/d' "$f" | tr -d '\r' | base64 -d >"$STATE/msg.der" ||
		fail "body is not base64" || return 1
	openssl cms -decrypt -inform DER -in "$STATE/msg.der" -binary \
		-inkey "$STATE/alice-key.pem" -recip "$STATE/certs/alice.pem" >"$STATE/msg.txt" ||
		fail "openssl cms -decrypt failed" || return 1
	echo "--- decrypted"
	cat "$STATE/msg.txt"
	grep -q "$SECRET" "$STATE/msg.txt" || fail "decrypted text lacks the body"
}

# watchdog_self_check: the daemon connects to its own socket, which has the
# unit's owner and mode, gets the greeting, and sends WATCHDOG=1; it does
# not fall back to watching only its accept loop (smimefilter(8)).
watchdog_self_check() {
	local pings=0
	for _ in $(seq 1 200); do
		pings=$(grep -o 'WATCHDOG=1' "$STATE/notify.log" 2>/dev/null | wc -l)
		[ "$pings" -ge 3 ] && break
		sleep 0.05
	done
	echo "WATCHDOG=1 messages: $pings"
	[ "$pings" -ge 3 ] || { cat "$STATE/daemon.log"; fail "want at least 3 WATCHDOG=1 within 10s"; return 1; }
	grep -q 'READY=1' "$STATE/notify.log" || fail "no READY=1" || return 1
	! grep -E 'may not connect to its own socket|self-check failed' "$STATE/daemon.log" ||
		fail "the self-check did not greet the daemon's own socket"
}

stop_activated() {
	local rc
	kill -TERM "$DAEMON_PID" || return 1
	for _ in $(seq 1 400); do
		kill -0 "$DAEMON_PID" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$DAEMON_PID" 2>/dev/null; then
		fail "still running 40s after SIGTERM"
		return 1
	fi
	wait "$DAEMON_PID"
	rc=$?
	DAEMON_PID=""
	rm -f "$STATE/daemon.pid"
	cat "$STATE/daemon.log"
	# The daemon has exited; socat may still be writing what it sent last.
	for _ in $(seq 1 100); do
		grep -q 'STOPPING=1' "$STATE/notify.log" && break
		sleep 0.05
	done
	stop_notify
	[ $rc -eq 0 ] || fail "exit status $rc after SIGTERM, want 0" || return 1
	grep -q 'STOPPING=1' "$STATE/notify.log" || fail "no STOPPING=1" || return 1
	! grep -q 'level=ERROR' "$STATE/daemon.log" || fail "errors in the daemon log"
}

# stop_notify ends the socat that an earlier step of this run (or of a
# killed run) started, and only that one.
stop_notify() {
	local pid=${NOTIFY_PID:-}
	[ -n "$pid" ] || pid=$(cat "$STATE/notify.pid" 2>/dev/null) || return 0
	case $(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") in
	socat*"$NOTIFY_SOCK"*) kill -TERM "$pid" 2>/dev/null ;;
	esac
	NOTIFY_PID=""
	rm -f "$STATE/notify.pid" "$NOTIFY_SOCK"
}

purge_pkg() {
	if [ -n "$DAEMON_PID" ]; then stop_daemon "$DAEMON_PID"; fi
	stop_notify
	[ -f "$STATE/installed" ] || {
		echo "this run installed nothing, so it purges nothing"
		return 0
	}
	dpkg-query -W -f='${Status}' smimefilter 2>/dev/null | grep -q '^install ok' || {
		echo "not installed, nothing to purge"
		rm -f "$STATE/installed"
		return 0
	}
	dpkg -L smimefilter >"$STATE/files.txt"
	# The run above left Maildir files owned by the user; they are ours,
	# not the package's.
	rm -rf "$STATE/mail"
	apt-get purge -y smimefilter || return 1
	local left=0 p
	dpkg-query -W -f='${Status}' smimefilter 2>/dev/null | grep -qv 'not-installed' &&
		{ fail "dpkg still knows smimefilter"; left=1; }
	for p in /etc/smimefilter /usr/share/doc/smimefilter /run/smimefilter; do
		[ ! -e "$p" ] || { fail "$p is left"; left=1; }
	done
	while read -r p; do
		[ -d "$p" ] && continue
		[ ! -e "$p" ] && [ ! -L "$p" ] || { fail "$p is left"; left=1; }
	done <"$STATE/files.txt"
	getent passwd "$SYSUSER" && { fail "user $SYSUSER is left"; left=1; }
	getent group "$SYSUSER" && { fail "group $SYSUSER is left"; left=1; }
	p=$(find /etc/systemd/system /var/lib/systemd/deb-systemd-helper-enabled \
		/var/lib/systemd/deb-systemd-helper-masked -name '*smimefilter*' 2>/dev/null)
	[ -z "$p" ] || { fail "systemd state left: $p"; left=1; }
	[ $left -eq 0 ] || return 1
	rm -f "$STATE/installed"
	echo "nothing left"
}

# --- main -------------------------------------------------------------------

mkdir -p "$STATE/logs" && rm -f "$STATE"/logs/*
trap 'if [ -n "$DAEMON_PID" ]; then stop_daemon "$DAEMON_PID"; fi; stop_notify' EXIT

step prepare prepare
step build build
step reproducible reproducible
step lintian run_lintian
step install install_pkg
step upgrade-keeps-conffile upgrade_keeps_conffile
step check-config check_config
step verify-units verify_units
step certificate make_certificate
step start-activated start_activated
step deliver deliver_one
step check-delivered check_delivered
step watchdog watchdog_self_check
step stop stop_activated
step purge purge_pkg always

total=$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')
echo
echo "== ci-deb summary (${total}s; logs in $STATE/logs) =="
printf '  %s\n' "${SUMMARY[@]}"
if [ "$FAILED" -eq 0 ]; then
	echo "ci-deb: PASS"
	exit 0
fi
echo "ci-deb: FAIL"
exit 1
