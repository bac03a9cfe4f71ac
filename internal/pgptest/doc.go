// Package pgptest is test support for OpenPGP, the counterpart of
// smimetest: it is imported by tests only and never by the daemon.
//
// It makes throw-away keys with the tools users have (GnuPG 2.2, Sequoia's
// sq, RNP as in Thunderbird), once per test binary, in homes inside one
// scratch directory; exports their public keys armored and binary (RFC 9580
// §6 and §10.1); decrypts an armored OpenPGP message or a PGP/MIME message
// (RFC 3156 §4) with the tool that made the key (gpg --batch -d, sq decrypt
// --recipient-key, rnp --homedir -d) or with go-crypto; lists a message's
// Public-Key Encrypted Session Key packets as gpg --list-packets sees them
// (RFC 9580 §5.1); and makes fast in-process keys with go-crypto for tests
// that need no external tool.
//
// Ciphertext is random, so tests check it by decrypting, never by golden
// bytes. External tools are optional on a laptop (the test is skipped) and
// required in CI (CI=true: the test fails), see Require. A test binary that
// uses the tools calls Cleanup from its TestMain: it stops the gpg-agents
// GnuPG started for the kit's homes and removes the scratch directory.
package pgptest
