// Package smimetest is test support for S/MIME: throw-away certificates and
// keys, the real decryptors users have (OpenSSL, NSS's cmsutil as in
// Thunderbird and Evolution, gpgsm as in KMail and Kleopatra) plus an
// in-process Go one, a CMS envelope inspector, and a corpus of messages that
// exercise the format rules of RFC 8551 and RFC 5652.
//
// Ciphertext is random, so tests check it by decrypting, never by golden
// bytes. External tools are optional on a laptop (the test is skipped) and
// required in CI (CI=true: the test fails), see Require.
package smimetest
