#!/usr/bin/env bash
# Build the Debian package: dist/smimefilter_<version>_<arch>.deb
#
#   packaging/build-deb.sh
#
# The version comes from packaging/debian/changelog only (its first entry;
# the upstream part, without the Debian revision, is compiled into the
# binary as main.version). Reproducible: file times, tar order and owners
# are fixed, SOURCE_DATE_EPOCH defaults to the time of the last git commit.
# Needs: go (PATH or /usr/local/go/bin), dpkg-dev (dpkg-parsechangelog),
# gzip. No root, no fakeroot (dpkg-deb --root-owner-group).
set -euo pipefail

cd "$(dirname "$0")/.."
PKG=packaging
CHANGELOG=$PKG/debian/changelog
export PATH="$PATH:/usr/local/go/bin"

die() { echo "build-deb: $*" >&2; exit 1; }
command -v go >/dev/null || die "go not found"
command -v dpkg-parsechangelog >/dev/null || die "dpkg-parsechangelog not found (apt-get install dpkg-dev)"

name=$(dpkg-parsechangelog -l "$CHANGELOG" -S Source)
version=$(dpkg-parsechangelog -l "$CHANGELOG" -S Version)
maintainer=$(dpkg-parsechangelog -l "$CHANGELOG" -S Maintainer)
upstream=${version%-*}
[ "$name" = smimefilter ] || die "$CHANGELOG: source name is $name"

arch=${DEB_HOST_ARCH:-$(dpkg --print-architecture)}
case $arch in
amd64 | arm64 | riscv64 | s390x) goarch=$arch ;;
i386) goarch=386 ;;
ppc64el) goarch=ppc64le ;;
*) die "unsupported architecture $arch" ;;
esac

if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
	SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null ||
		dpkg-parsechangelog -l "$CHANGELOG" -S Timestamp)
fi
export SOURCE_DATE_EPOCH
mandate=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)

out=dist/${name}_${version}_${arch}.deb
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
umask 022

# --- binary ---------------------------------------------------------------
install -d "$root/usr/sbin"
# Static, stripped (-s -w: Debian ships stripped binaries), no VCS or path
# information, so two builds of one commit are byte-identical.
CGO_ENABLED=0 GOOS=linux GOARCH=$goarch \
	go build -trimpath -buildvcs=false \
	-ldflags "-s -w -X main.version=$upstream" \
	-o "$root/usr/sbin/smimefilter" ./cmd/smimefilter

# Every Go module linked into the binary must have a stanza in the copyright
# file (Files: vendor/<module>/*, or the directory of a copy carried in the
# tree): a new dependency needs a license review.
patterns=$(awk '/^Files:/ { f = 1; sub(/^Files:/, ""); print; next }
	/^[ \t]/ && f { print; next } { f = 0 }' "$PKG/debian/copyright" | tr -s ' \t' '\n\n')
missing=$(go version -m "$root/usr/sbin/smimefilter" |
	awk '$1 == "dep" || $1 == "=>" { print $2 }' |
	while read -r mod; do
		case $mod in
		./*) file="${mod#./}/*" ;; # a copy carried in the tree (third_party/)
		*) file="vendor/$mod/*" ;;
		esac
		echo "$patterns" | grep -qxF "$file" || echo "$mod"
	done)
[ -z "$missing" ] || die "modules without a stanza in $PKG/debian/copyright: $(echo $missing)"

# --- files ----------------------------------------------------------------
install -d -m 0755 "$root/etc/smimefilter/certs"
install -m 0644 "$PKG/etc/smimefilter.toml" "$root/etc/smimefilter/smimefilter.toml"

install -d "$root/lib/systemd/system"
install -m 0644 "$PKG/systemd/smimefilter.socket" "$PKG/systemd/smimefilter.service" \
	"$root/lib/systemd/system/"

for page in smimefilter.8 smimefilter.toml.5; do
	sec=${page##*.}
	install -d "$root/usr/share/man/man$sec"
	sed -e "s/@VERSION@/$upstream/g" -e "s/@DATE@/$mandate/g" "$PKG/man/$page" |
		gzip -9n >"$root/usr/share/man/man$sec/$page.gz"
done

doc=$root/usr/share/doc/$name
install -d "$doc"
install -m 0644 "$PKG/debian/copyright" "$doc/copyright"
gzip -9n <"$CHANGELOG" >"$doc/changelog.Debian.gz"

install -d "$root/usr/share/lintian/overrides"
install -m 0644 "$PKG/debian/lintian-overrides" "$root/usr/share/lintian/overrides/$name"

# --- control area ---------------------------------------------------------
install -d "$root/DEBIAN"
for script in postinst prerm postrm; do
	install -m 0755 "$PKG/debian/$script" "$root/DEBIAN/$script"
done
echo /etc/smimefilter/smimefilter.toml >"$root/DEBIAN/conffiles"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | LC_ALL=C sort |
	xargs md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"

# Installed-Size as dpkg-gencontrol counts it: KiB per file, rounded up, and
# one per directory or link.
size=$(cd "$root" && find . -path ./DEBIAN -prune -o -mindepth 1 -printf '%y %s\n' |
	awk '{ n += ($1 == "f") ? int(($2 + 1023) / 1024) : 1 } END { print n }')
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" \
	-e "s/@MAINTAINER@/$maintainer/" -e "s/@INSTALLED_SIZE@/$size/" \
	"$PKG/debian/control.in" >"$root/DEBIAN/control"

find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
mkdir -p dist
rm -f "$out"
dpkg-deb --root-owner-group -Zxz --build "$root" "$out" >/dev/null
echo "$out"
