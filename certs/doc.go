// Package certs loads recipients' S/MIME certificates and looks them up by
// address (RFC 8550 certificate handling, RFC 8551 §2.7 key transport).
package certs
