// Package enroll lets users bring their own certificates: a user sends one
// signed message to the enrollment address and clicks one link, and from
// then on the mail stored for them is encrypted to their certificate.
// Nobody else can do it for them, changes wait and are announced, and
// every change is logged.
//
// It is an engine with no SMTP or daemon knowledge. The filter hands it
// each message sent to the enrollment address ([Engine.HandleMessage]) and
// calls [Engine.Tick] about once a minute; both return the verdict and the
// mail to send ([Outgoing]: a plaintext RFC 5322 message and the exact
// certificates to encrypt it to), which the filter encrypts and delivers
// through its normal path. The engine never holds a private key.
//
// # The flow
//
//  1. Request: a message signed as mail clients sign, S/MIME (RFC 8551
//     §3.5) multipart/signed (RFC 1847) or opaque signed-data, a CMS
//     SignedData (RFC 5652 §5) verified with go.mozilla.org/pkcs7. The
//     certificate asked for (the signer's, or the one its
//     SMIMEEncryptionKeyPreference attribute names, RFC 8551 §2.5.3) must
//     pass exactly the certificate store's RFC 8550 checks
//     (certs.CheckRecipient) and name addresses delivered here.
//  2. Challenge: for each such address, a message to that address
//     encrypted to the requested certificate only, holding a single-use
//     code of 160 random bits as a mailto: link (RFC 6068) whose subject
//     carries it, and the same in words. Reading it takes the private key
//     and the mailbox. The code is stored only as its SHA-256 and
//     compared in constant time; it expires after Options.CodeLifetime.
//  3. Confirmation: a message whose Subject carries the code (no
//     signature needed). The certificate becomes active at once when the
//     address has no usable certificate, else after Options.ChangeDelay.
//  4. Notices: a request or confirmation for an address that already has
//     certificates is announced to them, encrypted to them, with a cancel
//     code; every activation is announced to all certificates then
//     active; the last certificate of an address gets expiry warnings
//     (Options.ExpiryWarnings), each once.
//
// A [Kind] holds what is specific to one kind of key: [SMIME] certificates
// and [OpenPGP] keys (a request attaches the key as application/pgp-keys,
// or carries it in the Autocrypt header of a message signed with it,
// RFC 3156 §5; its challenge is PGP/MIME, encrypted to that key only). The
// requests, codes, delay, notices and log are shared.
//
// # State
//
// Everything lives in Options.Dir: active/ (the enrolled certificates,
// which the certificate store reads beside certs.dir; each file is bound
// to one address by its "Enrolled-Address:" line), pending/ (requests, one
// JSON file each, holding hashes of codes, never codes), notices.json (the
// expiry warnings sent) and log.jsonl (the change log, one JSON object a
// line, append-only). Files are replaced atomically (temporary file,
// fsync, rename, fsync of the directory) and log lines are fsynced before
// the action counts as done. An activation writes the certificate file,
// then the log line, then removes the request; Open completes one that a
// crash interrupted, and a restart never makes anything active before its
// time.
//
// # Integration
//
// The filter accepts RCPT for the enrollment address and hands the whole
// message with its envelope sender to HandleMessage, never to a mailbox.
// Result.Err nil is a 250; a refusal is a 5xx with its text, or a 4xx when
// Temporary; an error from the engine itself is a 451. Each Outgoing is
// encrypted to exactly its EncryptTo (not to what the store finds for
// its address: a challenge must open only with the requested key) and
// delivered to its To through the normal outbound path. Tick runs once a
// minute. The certificate store loads ActiveDir beside certs.dir and uses
// each file there for the one address of its "Enrolled-Address:" line.
//
// # Abuse
//
// Messages are bounded in size; requests are limited per envelope sender
// and per address per day, pending requests per address and in total, and
// log lines in length, so that a flood can neither fill the disk nor mail
// a victim without end. Refusals that cannot succeed later wrap a
// permanent sentinel (5xx); limits wrap ErrOverLimit (4xx).
package enroll
