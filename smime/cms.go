package smime

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"sync"

	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/crypto/cryptobyte/asn1"
)

// KeyTransport selects how the content-encryption key is encrypted for each
// recipient's RSA key.
type KeyTransport int

const (
	// RSAPKCS1v15 is rsaEncryption (RFC 8017 §7.2): every S/MIME client
	// decrypts it (OpenSSL, NSS, gpgsm).
	RSAPKCS1v15 KeyTransport = iota
	// RSAOAEP is id-RSAES-OAEP with SHA-256 and MGF1-SHA-256 written out
	// explicitly (RFC 4055 §3.1, RFC 8017 §A.2.1): left to their defaults the
	// parameters would mean SHA-1. OpenSSL's cms decrypts it; NSS before 3.101
	// and gpgsm 2.2 do not.
	RSAOAEP
)

func (k KeyTransport) String() string {
	switch k {
	case RSAPKCS1v15:
		return "RSA-PKCS1v15"
	case RSAOAEP:
		return "RSA-OAEP-SHA256"
	}
	return fmt.Sprintf("KeyTransport(%d)", int(k))
}

// Options tune Encrypt and NewEnvelopedWriter. The zero value is the
// universal default: AES-256-CBC content, RSA PKCS#1 v1.5 key transport.
type Options struct {
	KeyTransport KeyTransport
	// HeaderProtection applies RFC 9788 header protection: user-facing fields
	// are copied into the encrypted entity, whose Content-Type gets
	// hp="cipher", and the outer Subject becomes "[...]". Clients without
	// RFC 9788 support then list "[...]" as the subject, hence an option.
	HeaderProtection bool
	// SegmentSize is the size of the ciphertext OCTET STRING segments, and so
	// of the plaintext buffered at a time. 0 means 64 KiB. It is rounded down
	// to a multiple of the AES block size; at most 16 MiB.
	SegmentSize int
	// Rand is the source of the content key and IV, and of key transport
	// padding where crypto/rsa uses it. nil means crypto/rand.
	Rand io.Reader
}

const (
	defaultSegmentSize = 64 << 10
	maxSegmentSize     = 16 << 20
	keySize            = 32 // AES-256
)

var (
	// ErrNoRecipients means no recipient certificate was given.
	ErrNoRecipients = errors.New("smime: no recipient certificates")
	// ErrUnsupportedKey means a recipient certificate's public key cannot be
	// used for key transport: only RSA can.
	ErrUnsupportedKey = errors.New("smime: unsupported recipient key")
	// ErrClosed means Write or Close was called after Close.
	ErrClosed = errors.New("smime: writer already closed")
)

// Object identifiers, DER contents octets.
var (
	oidData          = []byte{0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01} // RFC 5652 §4
	oidEnvelopedData = []byte{0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03} // RFC 5652 §6.1
	oidRSAEncrypt    = []byte{0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01} // RFC 8017 §A.1
	oidRSAESOAEP     = []byte{0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x07} // RFC 8017 §A.2.1
	oidMGF1          = []byte{0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08} // RFC 8017 §B.2.1
	oidSHA256        = []byte{0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01} // RFC 5754 §2.2
	oidAES256CBC     = []byte{0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a} // RFC 3565 §4.1
)

// BER building blocks (X.690 §8.1.3.6, §8.1.5).
var (
	beginSequence  = []byte{0x30, 0x80}
	beginExplicit0 = []byte{0xa0, 0x80} // [0] EXPLICIT, and [0] IMPLICIT constructed
)

const (
	openIndefinite   = 5 // ContentInfo, [0], EnvelopedData, EncryptedContentInfo, [0]
	octetStringTag   = 0x04
	maxOctetStringHL = 6 // tag + 0x84 + 4 length octets
)

// envelope is everything decided before the first byte is written: the
// content cipher and the BER prefix up to the encrypted content.
type envelope struct {
	mode    cipher.BlockMode
	prefix  []byte
	segSize int
}

// NewEnvelopedWriter writes a CMS ContentInfo holding EnvelopedData
// (RFC 5652 §6) to dst, encrypting what is written to it with AES-256-CBC
// (RFC 3565) for the given recipients. The output is indefinite-length BER
// shaped like `openssl cms -encrypt -stream`, so memory stays bounded by
// SegmentSize whatever the message size. Close writes the padding and the
// end-of-contents octets; it does not close dst.
//
// Only the certificates passed in are named in the envelope: encrypt one
// envelope per recipient (or per identical set of certificates) so that no
// recipient learns of another, Bcc included.
func NewEnvelopedWriter(dst io.Writer, recipients []*x509.Certificate, opts Options) (io.WriteCloser, error) {
	env, err := newEnvelope(recipients, opts)
	if err != nil {
		return nil, err
	}
	return env.start(dst)
}

func newEnvelope(recipients []*x509.Certificate, opts Options) (*envelope, error) {
	if len(recipients) == 0 {
		return nil, ErrNoRecipients
	}
	segSize := opts.SegmentSize
	switch {
	case segSize == 0:
		segSize = defaultSegmentSize
	case segSize < 0 || segSize > maxSegmentSize:
		return nil, fmt.Errorf("smime: segment size %d out of range (1 to %d)", segSize, maxSegmentSize)
	}
	segSize = max(segSize/aes.BlockSize*aes.BlockSize, aes.BlockSize)
	if opts.KeyTransport != RSAPKCS1v15 && opts.KeyTransport != RSAOAEP {
		return nil, fmt.Errorf("smime: unknown key transport %v", opts.KeyTransport)
	}
	// Check every recipient before drawing key material, so that a bad
	// certificate fails the same way whatever its position.
	for _, c := range recipients {
		if err := checkRecipient(c); err != nil {
			return nil, err
		}
	}

	rnd := opts.Rand
	if rnd == nil {
		rnd = rand.Reader
	}
	var keyIV [keySize + aes.BlockSize]byte
	defer clear(keyIV[:])
	if _, err := io.ReadFull(rnd, keyIV[:]); err != nil {
		return nil, fmt.Errorf("smime: generating content key: %w", err)
	}
	key, iv := keyIV[:keySize], keyIV[keySize:]

	infos := make([]recipientInfo, 0, len(recipients))
	for _, c := range recipients {
		ri, err := keyTransRecipientInfo(c, key, opts.KeyTransport, rnd)
		if err != nil {
			return nil, err
		}
		infos = append(infos, ri)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("smime: content cipher: %w", err)
	}
	prefix, err := envelopePrefix(infos, iv)
	if err != nil {
		return nil, err
	}
	return &envelope{
		mode:    cipher.NewCBCEncrypter(block, iv),
		prefix:  prefix,
		segSize: segSize,
	}, nil
}

// envelopePrefix returns the BER from the ContentInfo tag up to the opening
// of the encrypted content. The constructed types are indefinite-length so
// that nothing depends on the message size; RecipientInfos is small and
// definite, as OpenSSL writes it.
func envelopePrefix(infos []recipientInfo, iv []byte) ([]byte, error) {
	b := cryptobyte.NewBuilder(make([]byte, 0, 128+len(infos)*600))
	b.AddBytes(beginSequence) // ContentInfo
	addOID(b, oidEnvelopedData)
	b.AddBytes(beginExplicit0) // content [0] EXPLICIT
	b.AddBytes(beginSequence)  // EnvelopedData
	b.AddASN1Int64(envelopedDataVersion(infos))
	// RecipientInfos in the order given. OpenSSL sorts this SET OF as DER
	// would; BER does not require it and no decryptor cares.
	b.AddASN1(asn1.SET, func(set *cryptobyte.Builder) {
		for _, ri := range infos {
			set.AddBytes(ri.der)
		}
	})
	b.AddBytes(beginSequence) // EncryptedContentInfo
	addOID(b, oidData)
	b.AddASN1(asn1.SEQUENCE, func(alg *cryptobyte.Builder) { // contentEncryptionAlgorithm
		addOID(alg, oidAES256CBC)
		alg.AddASN1OctetString(iv) // RFC 3565 §4.1: AES-IV
	})
	// encryptedContent [0] IMPLICIT OCTET STRING, constructed so that the
	// ciphertext can follow in primitive segments.
	b.AddBytes(beginExplicit0)
	out, err := b.Bytes()
	if err != nil {
		return nil, fmt.Errorf("smime: encoding envelope: %w", err)
	}
	return out, nil
}

// recipientInfo is one encoded RecipientInfo and its version field.
type recipientInfo struct {
	version int64
	der     []byte
}

// envelopedDataVersion applies RFC 5652 §6.1 to what this package writes:
// there is never an originatorInfo, an unprotectedAttrs, a pwri or an ori,
// so the version is 0 when every RecipientInfo is version 0 and 2 otherwise
// (a KeyTransRecipientInfo naming the key by subjectKeyIdentifier would be
// version 2).
func envelopedDataVersion(infos []recipientInfo) int64 {
	for _, ri := range infos {
		if ri.version != 0 {
			return 2
		}
	}
	return 0
}

// addOID writes an OBJECT IDENTIFIER from its contents octets.
func addOID(b *cryptobyte.Builder, oid []byte) {
	b.AddASN1(asn1.OBJECT_IDENTIFIER, func(c *cryptobyte.Builder) { c.AddBytes(oid) })
}

func checkRecipient(c *x509.Certificate) error {
	if c == nil {
		return fmt.Errorf("%w: nil certificate", ErrUnsupportedKey)
	}
	if _, ok := c.PublicKey.(*rsa.PublicKey); !ok {
		return fmt.Errorf("%w: certificate %q (serial %x) has %s, S/MIME key transport needs RSA",
			ErrUnsupportedKey, c.Subject.String(), c.SerialNumber, keyKind(c.PublicKey))
	}
	if len(c.RawIssuer) == 0 || len(c.RawTBSCertificate) == 0 {
		return fmt.Errorf("smime: certificate %q was not parsed from DER", c.Subject.String())
	}
	return nil
}

func keyKind(k any) string {
	switch k.(type) {
	case *ecdsa.PublicKey:
		return "an ECDSA key"
	case ed25519.PublicKey:
		return "an Ed25519 key"
	case nil:
		return "no usable public key"
	}
	return fmt.Sprintf("a %T key", k)
}

// keyTransRecipientInfo encodes one KeyTransRecipientInfo (RFC 5652 §6.2.1)
// naming the certificate by issuer and serial number.
func keyTransRecipientInfo(c *x509.Certificate, key []byte, kt KeyTransport, rnd io.Reader) (recipientInfo, error) {
	// RFC 5652 §6.2.1: version 0 because rid is issuerAndSerialNumber,
	// whatever the key encryption algorithm (OAEP included).
	const version = 0
	pub := c.PublicKey.(*rsa.PublicKey)
	serial, err := rawSerial(c)
	if err != nil {
		return recipientInfo{}, err
	}
	var ek []byte
	switch kt {
	case RSAOAEP:
		ek, err = rsa.EncryptOAEP(sha256.New(), rnd, pub, key, nil)
	default:
		ek, err = rsa.EncryptPKCS1v15(rnd, pub, key)
	}
	if err != nil {
		return recipientInfo{}, fmt.Errorf("smime: encrypting the content key for %q: %w", c.Subject.String(), err)
	}
	var b cryptobyte.Builder
	b.AddASN1(asn1.SEQUENCE, func(ri *cryptobyte.Builder) {
		ri.AddASN1Int64(version)
		ri.AddASN1(asn1.SEQUENCE, func(ias *cryptobyte.Builder) {
			ias.AddBytes(c.RawIssuer)
			ias.AddBytes(serial)
		})
		addKeyEncryptionAlgorithm(ri, kt)
		ri.AddASN1OctetString(ek)
	})
	out, err := b.Bytes()
	if err != nil {
		return recipientInfo{}, fmt.Errorf("smime: encoding RecipientInfo: %w", err)
	}
	return recipientInfo{version: version, der: out}, nil
}

func addKeyEncryptionAlgorithm(b *cryptobyte.Builder, kt KeyTransport) {
	b.AddASN1(asn1.SEQUENCE, func(alg *cryptobyte.Builder) {
		if kt != RSAOAEP {
			addOID(alg, oidRSAEncrypt)
			alg.AddASN1NULL() // RFC 8017 §A.1: parameters NULL
			return
		}
		addOID(alg, oidRSAESOAEP)
		// RSAES-OAEP-params (RFC 8017 §A.2.1). The SHA-256 AlgorithmIdentifier
		// omits its parameters (RFC 5754 §2), as OpenSSL writes it;
		// pSourceAlgorithm stays at its default (empty label) and is omitted.
		alg.AddASN1(asn1.SEQUENCE, func(p *cryptobyte.Builder) {
			p.AddASN1(asn1.Tag(0).Constructed().ContextSpecific(), func(h *cryptobyte.Builder) {
				h.AddASN1(asn1.SEQUENCE, func(a *cryptobyte.Builder) { addOID(a, oidSHA256) })
			})
			p.AddASN1(asn1.Tag(1).Constructed().ContextSpecific(), func(m *cryptobyte.Builder) {
				m.AddASN1(asn1.SEQUENCE, func(a *cryptobyte.Builder) {
					addOID(a, oidMGF1)
					a.AddASN1(asn1.SEQUENCE, func(h *cryptobyte.Builder) { addOID(h, oidSHA256) })
				})
			})
		})
	})
}

// rawSerial returns the serialNumber INTEGER element exactly as encoded in
// the certificate, so that decryptors matching issuerAndSerialNumber by bytes
// find it even when the CA encoded the serial non-minimally.
func rawSerial(c *x509.Certificate) ([]byte, error) {
	s := cryptobyte.String(c.RawTBSCertificate)
	var tbs, serial cryptobyte.String
	var tag asn1.Tag
	if !s.ReadASN1(&tbs, asn1.SEQUENCE) ||
		!tbs.SkipOptionalASN1(asn1.Tag(0).Constructed().ContextSpecific()) ||
		!tbs.ReadAnyASN1Element(&serial, &tag) || tag != asn1.INTEGER {
		return nil, fmt.Errorf("smime: certificate %q: cannot read its serial number", c.Subject.String())
	}
	return serial, nil
}

// start writes the prefix to dst and returns the streaming writer.
func (e *envelope) start(dst io.Writer) (*envelopedWriter, error) {
	if _, err := dst.Write(e.prefix); err != nil {
		return nil, fmt.Errorf("smime: writing envelope: %w", err)
	}
	w := &envelopedWriter{dst: dst, mode: e.mode}
	if e.segSize == defaultSegmentSize {
		// The daemon encrypts thousands of small messages a second: 128 KiB
		// of fresh buffers for each was most of its garbage.
		bufs := segmentBufs.Get().(*segmentBuffers)
		w.buf, w.out, w.pooled = bufs.buf[:0], bufs.out, bufs
	} else {
		w.buf = make([]byte, 0, e.segSize)
		w.out = make([]byte, maxOctetStringHL+e.segSize)
	}
	return w, nil
}

type segmentBuffers struct{ buf, out []byte }

var segmentBufs = sync.Pool{New: func() any {
	return &segmentBuffers{buf: make([]byte, 0, defaultSegmentSize), out: make([]byte, maxOctetStringHL+defaultSegmentSize)}
}}

// envelopedWriter encrypts in CBC mode as data arrives and writes each full
// segment as a primitive OCTET STRING inside the constructed [0].
type envelopedWriter struct {
	dst  io.Writer
	mode cipher.BlockMode
	buf  []byte // plaintext not yet encrypted; cap is the segment size
	out  []byte // one encoded segment
	err  error  // sticky: after a failed write the stream is unusable

	pooled *segmentBuffers // returned to segmentBufs by Close
}

func (w *envelopedWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	seg := cap(w.buf)
	written := 0
	for len(p) > 0 {
		if len(w.buf) == 0 && len(p) >= seg {
			// Encrypt straight from the caller's buffer: no copy for big writes.
			if err := w.writeSegment(p[:seg]); err != nil {
				return written, err
			}
			p = p[seg:]
			written += seg
			continue
		}
		n := copy(w.buf[len(w.buf):seg], p)
		w.buf = w.buf[:len(w.buf)+n]
		p = p[n:]
		written += n
		if len(w.buf) == seg {
			err := w.writeSegment(w.buf)
			// Plaintext must not linger in memory, pooled or not, nor
			// after a failed write.
			clear(w.buf)
			w.buf = w.buf[:0]
			if err != nil {
				return written, err
			}
		}
	}
	return written, nil
}

// writeSegment encrypts plain (a whole number of blocks) into one OCTET STRING.
func (w *envelopedWriter) writeSegment(plain []byte) error {
	hl := putOctetStringHeader(w.out, len(plain))
	w.mode.CryptBlocks(w.out[hl:hl+len(plain)], plain)
	if _, err := w.dst.Write(w.out[:hl+len(plain)]); err != nil {
		w.err = fmt.Errorf("smime: writing ciphertext: %w", err)
		return w.err
	}
	return nil
}

// putOctetStringHeader writes a definite-length OCTET STRING tag and length
// (X.690 §8.1.3) and returns its size.
func putOctetStringHeader(b []byte, n int) int {
	b[0] = octetStringTag
	switch {
	case n < 0x80:
		b[1] = byte(n)
		return 2
	case n <= 0xff:
		b[1], b[2] = 0x81, byte(n)
		return 3
	case n <= 0xffff:
		b[1], b[2], b[3] = 0x82, byte(n>>8), byte(n)
		return 4
	case n <= 0xffffff:
		b[1], b[2], b[3], b[4] = 0x83, byte(n>>16), byte(n>>8), byte(n)
		return 5
	}
	b[1], b[2], b[3], b[4], b[5] = 0x84, byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
	return 6
}

// Close pads the last block (PKCS#7, RFC 5652 §6.3: always 1 to 16 bytes),
// writes the last segment and closes every indefinite-length encoding.
func (w *envelopedWriter) Close() error {
	if w.err != nil {
		return w.err
	}
	n := aes.BlockSize - len(w.buf)%aes.BlockSize
	for range n {
		w.buf = append(w.buf, byte(n))
	}
	err := w.writeSegment(w.buf)
	// Earlier segments were cleared as they were encrypted; w.out only
	// ever holds ciphertext.
	clear(w.buf)
	w.buf = w.buf[:0]
	if err != nil {
		return err
	}
	if w.pooled != nil {
		segmentBufs.Put(w.pooled)
		w.pooled, w.buf, w.out = nil, nil, nil
	}
	var eoc [2 * openIndefinite]byte // X.690 §8.1.5: 00 00 per open encoding
	if _, err := w.dst.Write(eoc[:]); err != nil {
		w.err = fmt.Errorf("smime: writing end of envelope: %w", err)
		return w.err
	}
	w.err = ErrClosed
	return nil
}
