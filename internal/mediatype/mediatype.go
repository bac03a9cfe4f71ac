// Package mediatype reads a MIME Content-Type field value (RFC 2045 §5.1)
// as leniently as mail clients do.
package mediatype

import (
	"mime"
	"strings"
)

// Parse returns the lower-case media type and the parameters (names
// lower-cased) of a Content-Type value. A value that mime.ParseMediaType
// rejects is parsed leniently: a sender's syntax error elsewhere in the
// field must not hide the media type (it decides whether a message may pass
// unencrypted, and where header protection writes its parameter).
func Parse(v string) (string, map[string]string) {
	if strings.TrimSpace(v) == "" {
		return "", nil
	}
	mt, params, err := mime.ParseMediaType(v)
	if err == nil {
		return mt, params
	}
	parts := strings.Split(v, ";")
	mt = strings.ToLower(strings.TrimSpace(parts[0]))
	params = make(map[string]string)
	for _, p := range parts[1:] {
		k, val, ok := strings.Cut(p, "=")
		if !ok {
			continue
		}
		k = strings.ToLower(strings.TrimSpace(k))
		val = strings.Trim(strings.TrimSpace(val), `"`)
		if _, dup := params[k]; !dup {
			params[k] = val
		}
	}
	return mt, params
}
