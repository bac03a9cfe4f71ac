// Package certs loads recipients' S/MIME certificates and OpenPGP public
// keys and looks them up by address (RFC 8550 certificate handling, RFC 8551
// §2.3 key transport; RFC 9580 for OpenPGP keys, openpgp.go).
//
// A [Store] is an immutable snapshot of one directory of certificate files
// (PEM, DER or PKCS #7 certs-only, any number of certificates per file) and
// OpenPGP transferable public keys (armored or binary, any number per file;
// each file is recognised by its content). A
// [Holder] swaps the current Store atomically when the directory changes,
// so that one mail transaction uses one consistent snapshot.
//
// # Usable certificates
//
// Only a certificate fit to encrypt to is ever returned by [Store.Lookup]
// (RFC 8550 §4.4):
//   - it is valid now: NotBefore ≤ now ≤ NotAfter, re-checked at every
//     lookup because a certificate can expire while the daemon runs. An
//     expired certificate is not loaded; one not valid yet is loaded and
//     used from its NotBefore on, so that a successor installed ahead of a
//     rollover needs no reload (both are listed in [Store.Skipped]);
//   - keyUsage, if present, asserts keyEncipherment (RFC 8550 §4.4.2); Go's
//     [x509.Certificate.Verify] does not look at these bits, so this package
//     does;
//   - extKeyUsage, if present, contains emailProtection or
//     anyExtendedKeyUsage (RFC 8550 §4.4.4);
//   - the public key is RSA of 2048 to 8192 bits: RSA key transport is what
//     every S/MIME client decrypts (RFC 8551 §2.3); RFC 8550 §4.3 asks for
//     2048 to 4096 bits to be supported, larger keys are allowed, and 8192
//     is a sanity cap;
//   - it names an address: subjectAltName rfc822Name, or the legacy
//     emailAddress attribute of the subject DN only when the certificate
//     has no rfc822Name (RFC 8550 §3);
//   - when [Options.Roots] is set, it chains to one of them for
//     emailProtection, with the other certificates of the directory as
//     intermediates. The chain's validity window then bounds the
//     certificate's.
//
// A CA certificate without an address in the directory only serves as an
// intermediate ([ErrCA]). One with an address is judged like any other
// certificate, because "openssl req -x509" marks the self-signed
// certificates it makes as CAs.
//
// # Address matching
//
// The domain part is compared case-insensitively (RFC 5321 §2.4). The local
// part is case-sensitive by the letter of RFC 5321 §2.4, yet practically
// every mail system treats it case-insensitively and RFC 5321 itself
// advises against mailboxes that differ only by case. So Lookup first
// returns the usable certificates whose local part matches exactly, and
// only if there is none falls back to a case-insensitive match of the
// local part (then every such certificate is returned). The exact
// spelling thus wins when both exist, and a certificate issued as
// "John.Doe@" still serves mail to "john.doe@".
//
// # Private keys
//
// The daemon must never hold private keys: a private key found in the
// directory is reported as skipped ([ErrPrivateKey]) and its decoded bytes
// are zeroed at once.
package certs
