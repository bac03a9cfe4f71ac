package conformance

import (
	"bytes"
	"encoding/base64"
	"strings"

	"github.com/smimefilter/smimefilter/internal/smimetest"
)

// reallyEncrypted reports whether msg holds encrypted content that parses
// as such to its end, judged independently of the filter: an
// application/pkcs7-mime EnvelopedData or AuthEnvelopedData whose whole
// BER structure parses (RFC 5652, internal/smimetest), or an ASCII-armored
// PGP MESSAGE (RFC 4880 §6) with a valid checksum whose packets are
// session-key packets followed by one encrypted-data packet that ends
// exactly at the end. Mail the filter stores unencrypted must pass this.
func reallyEncrypted(msg []byte) bool {
	if der, err := smimetest.ExtractDER(msg); err == nil {
		if _, err := smimetest.ParseEnvelope(der); err == nil {
			return true
		}
		if isAuthEnveloped(der) {
			return true
		}
	}
	return armoredPGPMessage(msg)
}

// isAuthEnveloped is a shallow check for a ContentInfo of type
// id-ct-authEnvelopedData (RFC 5083), which ParseEnvelope does not read:
// the OID right after the outer SEQUENCE's header, and an outer length
// that spans the data (indefinite: ending in end-of-contents octets).
func isAuthEnveloped(der []byte) bool {
	oid := []byte{0x06, 0x0b, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x10, 0x01, 0x17}
	if len(der) < 4+len(oid) || der[0] != 0x30 {
		return false
	}
	switch l := int(der[1]); {
	case l == 0x80:
		return bytes.HasPrefix(der[2:], oid) && bytes.HasSuffix(der, []byte{0, 0})
	case l < 0x80:
		return bytes.HasPrefix(der[2:], oid) && 2+l == len(der)
	case l <= 0x84:
		n := l & 0x7f
		size := 0
		for _, c := range der[2 : 2+n] {
			size = size<<8 | int(c)
		}
		return bytes.HasPrefix(der[2+n:], oid) && 2+n+size == len(der)
	}
	return false
}

// armoredPGPMessage finds the first armored PGP MESSAGE block and checks it.
func armoredPGPMessage(msg []byte) bool {
	text := strings.ReplaceAll(string(msg), "\r\n", "\n")
	_, block, ok := strings.Cut(text, "-----BEGIN PGP MESSAGE-----\n")
	if !ok {
		return false
	}
	block, _, ok = strings.Cut(block, "\n-----END PGP MESSAGE-----")
	if !ok {
		return false
	}
	// Armor headers end at the first empty line.
	_, body, ok := strings.Cut(block, "\n\n")
	if !ok {
		if strings.HasPrefix(block, "\n") {
			body = block[1:]
		} else {
			return false
		}
	}
	lines := strings.Split(strings.TrimSpace(body), "\n")
	if len(lines) < 2 || !strings.HasPrefix(lines[len(lines)-1], "=") {
		return false
	}
	data, err := base64.StdEncoding.DecodeString(strings.Join(lines[:len(lines)-1], ""))
	if err != nil {
		return false
	}
	sum, err := base64.StdEncoding.DecodeString(lines[len(lines)-1][1:])
	if err != nil || len(sum) != 3 || crc24(data) != uint32(sum[0])<<16|uint32(sum[1])<<8|uint32(sum[2]) {
		return false
	}
	return encryptedPackets(data)
}

// crc24 is the armor checksum, RFC 4880 §6.1.
func crc24(b []byte) uint32 {
	crc := uint32(0xb704ce)
	for _, c := range b {
		crc ^= uint32(c) << 16
		for range 8 {
			crc <<= 1
			if crc&0x1000000 != 0 {
				crc ^= 0x1864cfb
			}
		}
	}
	return crc & 0xffffff
}

// encryptedPackets walks OpenPGP packets (RFC 4880 §4.2): one or more
// public-key (1) or symmetric-key (3) session key packets, then one
// encrypted data packet (9, 18 or 20) reaching the end of the data.
func encryptedPackets(b []byte) bool {
	sessionKeys := 0
	for len(b) > 0 {
		tag, body, rest, ok := packet(b)
		if !ok {
			return false
		}
		switch tag {
		case 1, 3:
			sessionKeys++
		case 9, 18, 20:
			return sessionKeys > 0 && len(rest) == 0 && len(body) > 0
		default:
			return false
		}
		b = rest
	}
	return false
}

// packet splits off one packet; a partial-length body is followed to its
// last part.
func packet(b []byte) (tag byte, body, rest []byte, ok bool) {
	if len(b) < 2 || b[0]&0x80 == 0 {
		return 0, nil, nil, false
	}
	if b[0]&0x40 == 0 { // old format
		tag = (b[0] >> 2) & 0x0f
		n := []int{1, 2, 4, 0}[b[0]&3]
		if n == 0 || len(b) < 1+n {
			return 0, nil, nil, false
		}
		l := 0
		for _, c := range b[1 : 1+n] {
			l = l<<8 | int(c)
		}
		if len(b) < 1+n+l {
			return 0, nil, nil, false
		}
		return tag, b[1+n : 1+n+l], b[1+n+l:], true
	}
	tag = b[0] & 0x3f
	b = b[1:]
	for {
		if len(b) < 1 {
			return 0, nil, nil, false
		}
		var l, hdr int
		partial := false
		switch c := int(b[0]); {
		case c < 192:
			l, hdr = c, 1
		case c < 224:
			if len(b) < 2 {
				return 0, nil, nil, false
			}
			l, hdr = (c-192)<<8+int(b[1])+192, 2
		case c == 255:
			if len(b) < 5 {
				return 0, nil, nil, false
			}
			l, hdr = int(b[1])<<24|int(b[2])<<16|int(b[3])<<8|int(b[4]), 5
		default:
			l, hdr, partial = 1<<(c&0x1f), 1, true
		}
		if l < 0 || len(b) < hdr+l {
			return 0, nil, nil, false
		}
		body = append(body, b[hdr:hdr+l]...)
		b = b[hdr+l:]
		if !partial {
			return tag, body, b, true
		}
	}
}
