package mediatype

import (
	"maps"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in     string
		mt     string
		params map[string]string
	}{
		{"", "", nil},
		{"Text/Plain; Charset=UTF-8", "text/plain", map[string]string{"charset": "UTF-8"}},
		{`application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"`, "application/pkcs7-mime",
			map[string]string{"smime-type": "enveloped-data", "name": "smime.p7m"}},
		// Rejected by mime.ParseMediaType (a duplicate, a bare word): read leniently.
		{`multipart/encrypted; protocol="application/pgp-encrypted"; boundary=a; boundary=b; junk`, "multipart/encrypted",
			map[string]string{"protocol": "application/pgp-encrypted", "boundary": "a"}},
	} {
		mt, params := Parse(tc.in)
		if mt != tc.mt || !maps.Equal(params, tc.params) {
			t.Errorf("Parse(%q) = %q, %v; want %q, %v", tc.in, mt, params, tc.mt, tc.params)
		}
	}
}
