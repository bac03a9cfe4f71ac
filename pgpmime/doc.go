// Package pgpmime turns a message into PGP/MIME while it streams, encrypting
// it once for any number of copies, as package smime does for S/MIME.
//
// The output is RFC 3156 §4 multipart/encrypted: the application/
// pgp-encrypted control part ("Version: 1") and an application/octet-stream
// part holding one ASCII-armored OpenPGP message (RFC 9580 §6). The message
// is one Public-Key Encrypted Session Key packet (v3, RFC 9580 §5.1.1) per
// recipient key, then a Symmetrically Encrypted Integrity Protected Data
// packet, version 1 with its Modification Detection Code (§5.13.1), under
// AES-256 (§9.3), written with partial body lengths (§4.2.1.4). Inside is a
// Literal Data packet (§5.9: binary, no file name, date 0) holding the MIME
// entity byte for byte: the Content-* fields and the body, exactly what the
// S/MIME path encrypts (smime.Header.EntityPrefix), so that multipart/signed
// content still verifies after decryption (RFC 3156 §6.1 sign-then-encrypt).
// No compression: attachments mostly are compressed already, and
// compressing what a sender controls next to what it does not can leak the
// latter through the length.
//
// This is the profile GnuPG 2.2 (Debian 12), Sequoia and RNP (Thunderbird)
// all read. RFC 9580's SEIPD v2 (AEAD) and v6 PKESKs are not written:
// GnuPG, which follows LibrePGP instead, does not read them, nor does RNP
// 0.16.
//
// RFC 9788 header protection is an option, as for S/MIME: the protected
// fields go inside with hp="cipher" and the outer Subject becomes "[...]".
//
// The encryption is done once per message under a fresh session key held in
// memory only ([Seal]); each copy ([Seal.WriteCopy], [LiveCopy]) wraps the
// same encrypted data in its own key packets, so a copy names only its own
// recipients' keys (or none, with wildcard key IDs), and plaintext copies
// are decrypted back from the ciphertext ([Seal.OpenBody]) instead of being
// stored. Memory use does not depend on the message size.
//
// The SEIPD packet and the packets inside it are framed by this package
// (seipd.go), with go-crypto's OpenPGP CFB (packet.NewOCFBEncrypter) and
// crypto/sha1 for the cryptography: go-crypto's own writer allocates a
// buffer per write, a byte of garbage per byte of message. The key packets
// are go-crypto's; the armor around them (RFC 9580 §6.2, with the CRC-24 of
// §6.1 that GnuPG 2.2 and RNP 0.16 require) is this package's: the bytes
// go-crypto's armor.Encode writes, with the message's line ends, several
// times faster. Reading back (Seal.OpenBody) is go-crypto's.
package pgpmime
