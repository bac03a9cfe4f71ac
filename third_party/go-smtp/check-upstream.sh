#!/usr/bin/env bash
# Compares this copy of go-smtp with the upstream module of the version the
# top-level go.mod requires, and fails on any file that differs, exists only
# here or only upstream without a row in PATCHES.md's file table, or on a
# row whose status no longer matches. Upstream's cmd/ (left out here) and
# PATCHES.md itself are not compared.
#
# Run from anywhere, e.g. third_party/go-smtp/check-upstream.sh from the
# repository root. Needs go and the Go module proxy (or a module cache that
# already holds the version).
set -euo pipefail

copy=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$copy/../.." && pwd)
module=github.com/emersion/go-smtp

version=$(cd "$root" && go list -m -f '{{.Version}}' "$module")

# Outside any module, so that the replace line in go.mod does not apply.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
info=$(cd "$scratch" && GOFLAGS=-mod=mod go mod download -json "$module@$version") || {
	echo "check-upstream: go mod download $module@$version failed:" >&2
	echo "$info" >&2
	exit 1
}
upstream=$(printf '%s\n' "$info" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p')
if [[ -z "$upstream" || ! -d "$upstream" ]]; then
	echo "check-upstream: no module directory for $module@$version in:" >&2
	echo "$info" >&2
	exit 1
fi

# Status of every file that is not byte-identical: changed, added, removed.
(cd "$upstream" && find . -type f ! -path './cmd/*' | sed 's|^\./||' | sort) >"$scratch/upstream"
(cd "$copy" && find . -type f ! -name PATCHES.md | sed 's|^\./||' | sort) >"$scratch/copy"
{
	comm -13 "$scratch/upstream" "$scratch/copy" | sed 's/$/ added/'
	comm -23 "$scratch/upstream" "$scratch/copy" | sed 's/$/ removed/'
	comm -12 "$scratch/upstream" "$scratch/copy" | while IFS= read -r f; do
		cmp -s "$upstream/$f" "$copy/$f" || echo "$f changed"
	done
} | sort >"$scratch/actual"

# PATCHES.md's file table: rows of the form "| `file` | status | why |".
sed -n 's/^| `\([^`]*\)` | \(changed\|added\|removed\) |.*/\1 \2/p' "$copy/PATCHES.md" | sort >"$scratch/listed"

status=0
while read -r file change; do
	echo "check-upstream: $file is $change (against $module@$version) but has no row in PATCHES.md" >&2
	status=1
done < <(comm -23 "$scratch/actual" "$scratch/listed")
while read -r file change; do
	echo "check-upstream: PATCHES.md says $file is $change, but it is not (against $module@$version)" >&2
	status=1
done < <(comm -13 "$scratch/actual" "$scratch/listed")

if [[ $status -eq 0 ]]; then
	echo "check-upstream: $(wc -l <"$scratch/actual") files differ from $module@$version, all listed in PATCHES.md"
fi
exit $status
