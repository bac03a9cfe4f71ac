package main

import (
	"strings"
	"testing"
	"time"

	"github.com/smimefilter/smimefilter/enroll"
)

// TestEnrollDefaults: without [enroll] enrollment is off, the state
// directory follows $STATE_DIRECTORY, and the limits are the engine's.
func TestEnrollDefaults(t *testing.T) {
	t.Setenv("STATE_DIRECTORY", "/var/lib/smimefilter-test:/other")
	c, err := parseConfig("t.toml", []byte("[deliver]\nlmtp = \"/run/dovecot/lmtp\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	e := c.Enroll
	if e.Address != "" {
		t.Errorf("enroll.address = %q, want off", e.Address)
	}
	if e.Dir != "/var/lib/smimefilter-test" {
		t.Errorf("enroll.dir = %q, want $STATE_DIRECTORY's first entry", e.Dir)
	}
	o := c.enrollOptions()
	if o.ChangeDelay != 72*time.Hour || o.CodeLifetime != enroll.DefaultCodeLifetime ||
		o.MaxMessageSize != enroll.DefaultMaxMessageSize || o.MaxRequestsPerSenderPerDay != enroll.DefaultMaxRequestsPerSenderPerDay ||
		len(o.ExpiryWarnings) != 2 {
		t.Errorf("enroll options %+v, want the engine's defaults", o)
	}

	t.Setenv("STATE_DIRECTORY", "")
	c, err = parseConfig("t.toml", []byte("[deliver]\nlmtp = \"/run/dovecot/lmtp\"\n[enroll]\naddress = \"keys@example.org\"\nexpiry_warnings = []\nchange_delay = \"2s\"\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Enroll.Dir != "/var/lib/smimefilter" {
		t.Errorf("enroll.dir = %q, want /var/lib/smimefilter", c.Enroll.Dir)
	}
	if o := c.enrollOptions(); o.ExpiryWarnings == nil || len(o.ExpiryWarnings) != 0 || o.ChangeDelay != 2*time.Second {
		t.Errorf("expiry_warnings = [] gave %v (nil %v), change_delay %v; want none, 2s", o.ExpiryWarnings, o.ExpiryWarnings == nil, o.ChangeDelay)
	}
}

// TestEnrollBadValues: every bad [enroll] key is reported at once.
func TestEnrollBadValues(t *testing.T) {
	_, err := parseConfig("t.toml", []byte(`
[deliver]
lmtp = "/run/dovecot/lmtp"
[enroll]
address = "not an address"
dir = "relative/dir"
change_delay = "0s"
code_lifetime = "-1h"
expiry_warnings = ["-24h"]
max_message_size = 0
max_pending_per_address = 0
max_pending_total = -1
max_requests_per_sender = 0
max_requests_per_address = 0
`))
	if err == nil {
		t.Fatal("parseConfig accepted bad [enroll] values")
	}
	for _, key := range []string{"enroll.address", "enroll.dir", "enroll.change_delay", "enroll.code_lifetime",
		"enroll.expiry_warnings", "enroll.max_message_size", "enroll.max_pending_per_address", "enroll.max_pending_total",
		"enroll.max_requests_per_sender", "enroll.max_requests_per_address"} {
		if !strings.Contains(err.Error(), "t.toml:"+key+":") {
			t.Errorf("no problem reported for %s in:\n%v", key, err)
		}
	}
}
