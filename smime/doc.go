// Package smime turns a message into its S/MIME enveloped-data form while it
// streams: RFC 8551 (S/MIME 4.0) message format, RFC 5652 CMS EnvelopedData
// written as indefinite-length BER, RFC 9788 header protection as an option.
package smime
