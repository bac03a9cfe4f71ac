// Package conformance holds the differential conformance test of
// smimefilter against the real Dovecot: the same LMTP sessions (RFC 2033;
// DATA with dot-stuffing per RFC 5321 §4.5.2, BDAT per RFC 3030,
// pipelining per RFC 2920, SIZE per RFC 1870) are sent to Dovecot directly
// and through the daemon, and per recipient the reply class and the stored
// message are compared: the filter's copy, an RFC 8551 enveloped-data
// message, must decrypt to what Dovecot stored directly (RFC 5322 fields
// outside, the MIME entity inside), apart from the differences each case
// declares as policy.
//
// It has no code outside its tests. `go test ./conformance/` builds the
// daemon from this tree and needs dovecot-core, dovecot-lmtpd,
// openssl and gpg; without them it skips, or fails under CI=true.
// SMIMEFILTER_DAEMON=PATH tests another build of the daemon instead.
// FuzzConformance runs longer with
//
//	go test -run '^$' -fuzz FuzzConformance -fuzztime 10m ./conformance/
package conformance
