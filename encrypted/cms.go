package encrypted

import (
	"bytes"
	"errors"
	"fmt"
)

// The CMS parser walks BER (X.690 §8) as it arrives: a small stack of open
// constructed elements, each with its absolute end (or indefinite length),
// and a schema position per element. Primitive contents are skipped, except
// the few bytes of the ContentInfo's contentType.

// Bounds on a structure no real client comes near: they keep the state
// small and refuse absurd input early.
const (
	cmsMaxDepth    = 64
	cmsMaxElements = 1 << 20 // elements outside the encrypted content
	cmsMaxRecips   = 1 << 16
	cmsMaxLength   = 1 << 40 // 1 TiB: any longer length is not mail
	cmsMaxOID      = 64
)

// DER contents of the content types that mean "encrypted" (RFC 5652 §6.1
// envelopedData, RFC 5083 §1 authEnvelopedData), and signed-data for a
// clearer reason.
var (
	oidEnvelopedData     = []byte{0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x03}
	oidAuthEnvelopedData = []byte{0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x10, 0x01, 0x17}
	oidSignedData        = []byte{0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02}
)

// kind says what a constructed element is in the schema.
type kind uint8

const (
	kContentInfo kind = iota
	kEnvExplicit
	kAuthExplicit
	kEnveloped
	kAuthEnveloped
	kRecipientInfos
	kECI
	kEncrypted // constructed encryptedContent: OCTET STRING segments only
	kAny       // contents not examined beyond well-formed BER
)

var kindName = [...]string{
	kContentInfo:    "ContentInfo",
	kEnvExplicit:    "ContentInfo content",
	kAuthExplicit:   "ContentInfo content",
	kEnveloped:      "EnvelopedData",
	kAuthEnveloped:  "AuthEnvelopedData",
	kRecipientInfos: "RecipientInfos",
	kECI:            "EncryptedContentInfo",
	kEncrypted:      "encryptedContent",
	kAny:            "element",
}

// field is one component of a SEQUENCE. id is the identifier octet; either
// accepts the primitive and the constructed form (the constructed bit is
// ignored), as BER allows for OCTET STRING types.
type field struct {
	name     string
	id       byte
	either   bool
	optional bool
	kind     kind // for the constructed form
	prim     prim // for the primitive form
}

// prim says what to do with a primitive element's contents.
type prim uint8

const (
	pSkip      prim = iota
	pOID            // an OBJECT IDENTIFIER: short, not examined
	pType           // the ContentInfo contentType: collected
	pInt            // a small INTEGER
	pEncrypted      // encrypted content octets: counted
)

var schema = [...][]field{
	// RFC 5652 §3.
	kContentInfo: {
		{name: "contentType", id: 0x06, prim: pType},
		{name: "content", id: 0xa0}, // kind chosen by contentType
	},
	kEnvExplicit:  {{name: "EnvelopedData", id: 0x30, kind: kEnveloped}},
	kAuthExplicit: {{name: "AuthEnvelopedData", id: 0x30, kind: kAuthEnveloped}},
	// RFC 5652 §6.1.
	kEnveloped: {
		{name: "version", id: 0x02, prim: pInt},
		{name: "originatorInfo", id: 0xa0, optional: true, kind: kAny},
		{name: "recipientInfos", id: 0x31, kind: kRecipientInfos},
		{name: "encryptedContentInfo", id: 0x30, kind: kECI},
		{name: "unprotectedAttrs", id: 0xa1, optional: true, kind: kAny},
	},
	// RFC 5083 §2.1.
	kAuthEnveloped: {
		{name: "version", id: 0x02, prim: pInt},
		{name: "originatorInfo", id: 0xa0, optional: true, kind: kAny},
		{name: "recipientInfos", id: 0x31, kind: kRecipientInfos},
		{name: "authEncryptedContentInfo", id: 0x30, kind: kECI},
		{name: "authAttrs", id: 0xa1, optional: true, kind: kAny},
		{name: "mac", id: 0x04, either: true, kind: kAny},
		{name: "unauthAttrs", id: 0xa2, optional: true, kind: kAny},
	},
	// RFC 5652 §6.1: encryptedContent is OPTIONAL there (detached), but
	// mail without it carries no message at all.
	kECI: {
		{name: "contentType", id: 0x06, prim: pOID},
		{name: "contentEncryptionAlgorithm", id: 0x30, kind: kAny},
		{name: "encryptedContent", id: 0x80, either: true, kind: kEncrypted, prim: pEncrypted},
	},
}

type frame struct {
	end   int64 // absolute offset of the end, or -1: indefinite length
	kind  kind
	pos   int // next schema field
	count int // children seen
}

type cms struct {
	raw bool // no transfer encoding: the body's final line break is allowed

	off   int64 // bytes consumed
	hdr   [16]byte
	nhdr  int
	stack [cmsMaxDepth]frame
	depth int

	inContent bool  // inside a primitive element's contents
	remain    int64 // its bytes still to come
	prim      prim
	typ       [cmsMaxOID]byte // the ContentInfo contentType
	ntyp      int

	elements  int
	encrypted int64 // encryptedContent octets
	started   bool
	done      bool // the ContentInfo is complete
	trailer   int  // bytes of the final line break seen after it
}

var (
	errCMSEmpty       = errors.New("CMS: empty body")
	errCMSTruncated   = errors.New("CMS: body ends inside the ContentInfo")
	errCMSAfter       = errors.New("CMS: data after the end of the ContentInfo")
	errCMSNotSequence = errors.New("CMS: body does not start with a ContentInfo SEQUENCE")
	errCMSDepth       = errors.New("CMS: nesting too deep")
	errCMSElements    = errors.New("CMS: too many elements")
	errCMSLength      = errors.New("CMS: length too large")
	errCMSOverrun     = errors.New("CMS: element runs past the end of the element holding it")
	errCMSEOC         = errors.New("CMS: end-of-contents outside an indefinite-length element")
	errCMSIndefPrim   = errors.New("CMS: indefinite length on a primitive element")
	errCMSTag         = errors.New("CMS: malformed tag")
	errCMSNoRecips    = errors.New("CMS: no RecipientInfo")
	errCMSEmptyCont   = errors.New("CMS: empty encryptedContent")
	errCMSSigned      = errors.New("CMS: ContentInfo is signed-data, not encrypted")
	errCMSType        = errors.New("CMS: ContentInfo type is not enveloped-data or authEnveloped-data")
)

func newCMS(raw bool) *cms { return &cms{raw: raw} }

func (b *cms) write(p []byte) error {
	for len(p) > 0 {
		if b.done {
			return b.trailing(p)
		}
		if b.inContent {
			n := int64(len(p))
			if n > b.remain {
				n = b.remain
			}
			if b.prim == pType {
				b.ntyp += copy(b.typ[b.ntyp:], p[:n])
			}
			b.remain -= n
			b.off += n
			p = p[n:]
			if b.remain == 0 {
				if err := b.endPrimitive(); err != nil {
					return err
				}
			}
			continue
		}
		// A header is at most 16 bytes; gather it byte by byte.
		b.hdr[b.nhdr] = p[0]
		b.nhdr++
		p = p[1:]
		if err := b.header(); err != nil {
			return err
		}
	}
	return nil
}

// trailing allows, after a raw ContentInfo, the one line break that ends the
// body of every SMTP DATA transfer (RFC 5321 §4.1.1.4); it is no plaintext.
func (b *cms) trailing(p []byte) error {
	for _, c := range p {
		switch {
		case b.raw && c == '\r' && b.trailer == 0:
			b.trailer = 1
		case b.raw && c == '\n' && b.trailer < 2:
			b.trailer = 2
		default:
			return errCMSAfter
		}
	}
	return nil
}

// header decodes b.hdr once it holds a complete identifier and length, and
// starts the element.
func (b *cms) header() error {
	h := b.hdr[:b.nhdr]
	id := h[0]
	i := 1
	high := id&0x1f == 0x1f
	if high {
		// X.690 §8.1.2.4: tag number in base 128, at most 3 octets here.
		for {
			if i >= len(h) {
				return nil
			}
			if i > 3 || (i == 1 && h[i] == 0x80) {
				return errCMSTag
			}
			i++
			if h[i-1]&0x80 == 0 {
				break
			}
		}
	}
	if i >= len(h) {
		return nil
	}
	l := h[i]
	i++
	length := int64(l)
	switch {
	case l == 0x80:
		length = -1
	case l > 0x80:
		n := int(l & 0x7f)
		if n > 8 {
			return errCMSLength
		}
		if len(h) < i+n {
			return nil
		}
		length = 0
		for _, c := range h[i : i+n] {
			if length > cmsMaxLength>>8 {
				return errCMSLength
			}
			length = length<<8 | int64(c)
		}
	}
	if length > cmsMaxLength {
		return errCMSLength
	}
	b.off += int64(b.nhdr)
	b.nhdr = 0
	return b.start(id, high, length)
}

// start handles a complete header: identifier id, content length (-1:
// indefinite).
func (b *cms) start(id byte, high bool, length int64) error {
	constructed := id&0x20 != 0
	if id == 0 && !high {
		// End-of-contents (X.690 §8.1.5).
		if length != 0 || b.depth == 0 || b.stack[b.depth-1].end != -1 {
			return errCMSEOC
		}
		return b.pop()
	}
	if !constructed && length < 0 {
		return errCMSIndefPrim
	}
	if b.depth > 0 {
		if end := b.stack[b.depth-1].end; end >= 0 && (b.off > end || (length >= 0 && b.off+length > end)) {
			return errCMSOverrun
		}
	}

	// Decide what the element is from where it stands.
	var k kind
	var pr prim
	if b.depth == 0 {
		if b.started || id != 0x30 {
			return errCMSNotSequence
		}
		b.started = true
		k = kContentInfo
	} else {
		parent := &b.stack[b.depth-1]
		parent.count++
		var err error
		if k, pr, err = b.child(parent, id, high); err != nil {
			return err
		}
	}
	if k != kEncrypted || b.depth == 0 || b.stack[b.depth-1].kind != kEncrypted {
		// Segments of the encrypted content are as many as its size
		// allows; everything else counts.
		b.elements++
		if b.elements > cmsMaxElements {
			return errCMSElements
		}
	}

	if !constructed {
		switch pr {
		case pInt:
			if length < 1 || length > 8 {
				return fmt.Errorf("CMS: bad INTEGER length %d", length)
			}
		case pOID, pType:
			if length < 1 || length > cmsMaxOID {
				return fmt.Errorf("CMS: bad OBJECT IDENTIFIER length %d", length)
			}
		case pEncrypted:
			b.encrypted += length
		}
		b.prim = pr
		b.remain = length
		b.inContent = true
		if length == 0 {
			b.inContent = false
			return b.endPrimitive()
		}
		return nil
	}
	if b.depth == cmsMaxDepth {
		return errCMSDepth
	}
	end := int64(-1)
	if length >= 0 {
		end = b.off + length
	}
	b.stack[b.depth] = frame{end: end, kind: k}
	b.depth++
	return b.popDone()
}

// child checks an element against its parent's schema and returns what it
// is.
func (b *cms) child(parent *frame, id byte, high bool) (kind, prim, error) {
	switch parent.kind {
	case kAny:
		return kAny, pSkip, nil
	case kRecipientInfos:
		// RFC 5652 §6.2: a SEQUENCE (ktri) or [1]..[4] constructed
		// (kari, kekri, pwri, ori).
		if high || (id != 0x30 && (id < 0xa1 || id > 0xa4)) {
			return 0, 0, fmt.Errorf("CMS: RecipientInfo with tag 0x%02x", id)
		}
		if parent.count > cmsMaxRecips {
			return 0, 0, errCMSElements
		}
		return kAny, pSkip, nil
	case kEncrypted:
		// X.690 §8.7.3.2: segments are OCTET STRINGs, themselves
		// primitive or constructed.
		if high || id&^0x20 != 0x04 {
			return 0, 0, fmt.Errorf("CMS: encryptedContent segment with tag 0x%02x", id)
		}
		return kEncrypted, pEncrypted, nil
	}
	fields := schema[parent.kind]
	for parent.pos < len(fields) {
		f := fields[parent.pos]
		parent.pos++
		match := id == f.id || (f.either && id&^0x20 == f.id)
		if match && !high {
			k := f.kind
			if parent.kind == kContentInfo && f.id == 0xa0 {
				k = b.contentKind()
			}
			return k, f.prim, nil
		}
		if !f.optional {
			return 0, 0, fmt.Errorf("CMS: %s: tag 0x%02x where %s belongs", kindName[parent.kind], id, f.name)
		}
	}
	return 0, 0, fmt.Errorf("CMS: %s: extra element with tag 0x%02x", kindName[parent.kind], id)
}

func (b *cms) contentKind() kind {
	if bytes.Equal(b.typ[:b.ntyp], oidAuthEnvelopedData) {
		return kAuthExplicit
	}
	return kEnvExplicit
}

func (b *cms) endPrimitive() error {
	if b.prim == pType {
		t := b.typ[:b.ntyp]
		switch {
		case bytes.Equal(t, oidSignedData):
			return errCMSSigned
		case !bytes.Equal(t, oidEnvelopedData) && !bytes.Equal(t, oidAuthEnvelopedData):
			return errCMSType
		}
	}
	b.inContent = false
	return b.popDone()
}

// popDone closes the definite-length elements that end here.
func (b *cms) popDone() error {
	for b.depth > 0 && b.stack[b.depth-1].end == b.off {
		if err := b.pop(); err != nil {
			return err
		}
	}
	return nil
}

// pop closes the innermost element, checking that nothing it requires is
// missing.
func (b *cms) pop() error {
	f := &b.stack[b.depth-1]
	switch f.kind {
	case kRecipientInfos:
		if f.count == 0 {
			return errCMSNoRecips
		}
	case kAny, kEncrypted:
	default:
		fields := schema[f.kind]
		for _, fl := range fields[f.pos:] {
			if !fl.optional {
				return fmt.Errorf("CMS: %s ends before its %s", kindName[f.kind], fl.name)
			}
		}
		if f.kind == kECI && b.encrypted == 0 {
			return errCMSEmptyCont
		}
	}
	b.depth--
	if b.depth > 0 {
		if end := b.stack[b.depth-1].end; end >= 0 && b.off > end {
			return errCMSOverrun
		}
	}
	if b.depth == 0 {
		b.done = true
		return nil
	}
	if f.end == -1 {
		// The end-of-contents octets may close a definite parent.
		return b.popDone()
	}
	return nil
}

func (b *cms) close() error {
	switch {
	case b.done:
		return nil
	case !b.started && b.nhdr == 0:
		return errCMSEmpty
	}
	return errCMSTruncated
}
