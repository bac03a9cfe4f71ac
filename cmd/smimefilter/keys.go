package main

import (
	"reflect"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"
)

// maxCopiesNote is what check and the start-up log say about
// limits.max_copies, which older configuration files still carry.
const maxCopiesNote = "no longer used and ignored: every message is encrypted once per certificate set and the copies are sent one after another, so any number of certificate sets fits in one transaction; remove the key"

// minSpoolMemory keeps spool.memory above what one read of message data
// fills, so small mail never touches the disk.
const minSpoolMemory = 64 << 10

// keyKind says what a configuration key is in the TOML file.
type keyKind int

const (
	keyValue keyKind = iota
	keyTable         // [name] or [[name]]
	keyMap           // a table whose keys are free (policy.domains)
)

// knownKeys lists every key Config accepts, from its toml tags, so the
// list cannot drift from the struct.
func knownKeys() map[string]keyKind {
	keys := map[string]keyKind{}
	var walk func(prefix string, t reflect.Type)
	walk = func(prefix string, t reflect.Type) {
		for i := range t.NumField() {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			if !f.IsExported() || name == "" || name == "-" {
				continue
			}
			key := prefix + name
			ft := f.Type
			if ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct {
				ft = ft.Elem() // [[rewrite]]
			}
			switch {
			case ft.Kind() == reflect.Struct && !ft.Implements(textUnmarshaler) && !reflect.PointerTo(ft).Implements(textUnmarshaler):
				keys[key] = keyTable
				walk(key+".", ft)
			case ft.Kind() == reflect.Map:
				keys[key] = keyMap
			default:
				keys[key] = keyValue
			}
		}
	}
	walk("", reflect.TypeFor[Config]())
	return keys
}

var textUnmarshaler = reflect.TypeFor[interface{ UnmarshalText([]byte) error }]()

// unknownKey is a key of the file that Config does not have.
type unknownKey struct {
	key     string
	table   bool   // a whole table: its keys are not reported one by one
	suggest string // the nearest known key, or ""
}

func (u unknownKey) problem() string {
	what := "unknown key"
	if u.table {
		what = "unknown table"
	}
	if u.suggest != "" {
		return what + " (did you mean " + u.suggest + "?)"
	}
	return what
}

// unknownKeys reports each unknown key of the file once: a misspelled
// table is one problem, not one per key under it.
func unknownKeys(md toml.MetaData) []unknownKey {
	known := knownKeys()
	seen := map[string]bool{}
	var out []unknownKey
	for _, k := range md.Undecoded() {
		// The first component that is not known is the mistake; what
		// follows it is only the mistake's content.
		n := 1
		for n < len(k) && known[strings.Join(k[:n], ".")] == keyTable {
			n++
		}
		key := strings.Join(k[:n], ".")
		if seen[key] {
			continue
		}
		seen[key] = true
		typ := md.Type(k[:n]...)
		u := unknownKey{key: key, table: n < len(k) || typ == "Hash" || typ == "ArrayHash"}
		u.suggest = nearestKey(known, key, u.table)
		out = append(out, u)
	}
	return out
}

// nearestKey is the known key closest to key by edit distance, if it is
// close enough to be a typing mistake, else the one known key with the
// same last component (a key put in the wrong table).
func nearestKey(known map[string]keyKind, key string, table bool) string {
	names := make([]string, 0, len(known))
	for k, kind := range known {
		// A table's own name is no suggestion for a key under it.
		if (kind == keyTable) == table && !strings.HasPrefix(key, k+".") {
			names = append(names, k)
		}
	}
	sort.Strings(names) // ties go the same way every time
	best, bestDist := "", max(2, len(key)/4)+1
	for _, k := range names {
		if d := editDistance(key, k); d < bestDist {
			best, bestDist = k, d
		}
	}
	if best != "" {
		return best
	}
	leaf := key[strings.LastIndexByte(key, '.')+1:]
	var same []string
	for _, k := range names {
		if k[strings.LastIndexByte(k, '.')+1:] == leaf {
			same = append(same, k)
		}
	}
	if len(same) == 1 {
		return same[0]
	}
	return ""
}

// editDistance is the Levenshtein distance of a and b in bytes (keys are
// ASCII).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
