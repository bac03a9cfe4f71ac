package encrypted_test

import (
	"fmt"
	"io"
	"strings"

	"github.com/smimefilter/smimefilter/encrypted"
)

// An inline PGP message written by gpg 2.2 (Curve25519 key).
const armored = "-----BEGIN PGP MESSAGE-----\r\n" +
	"\r\n" +
	"hF4D/W+qWDTvv1gSAQdAAZzlVMDwQKiuv0JoYl8DqT59pgd6FthOpDMfcGIlQDgw\r\n" +
	"ZEz4twdhLBQ/f0dGeMywDBq/6PM4vk0ujvNVKwMmha04lGHA1DnKdcueU6mUQNKI\r\n" +
	"0lcBoVbU7cKi/RBjHb7nfLx8L5cufUA1+Jq/GfGztflk6fR66s6Xx0r4rraHhAEj\r\n" +
	"PCh7Gu/rJ9K2D+snzurDtReTaHnh64KJEDxZ7Pkfs9fhRfKfpM1YoQ4=\r\n" +
	"=fOSn\r\n" +
	"-----END PGP MESSAGE-----\r\n"

// The filter tees the body into a Checker while it streams it elsewhere, and
// asks for the verdict after the last byte.
func ExampleChecker() {
	for _, body := range []string{
		armored,
		armored + "\r\nP.S. The password is swordfish.\r\n",
	} {
		c := encrypted.NewChecker("text/plain; charset=us-ascii", "7bit")
		if _, err := io.Copy(io.MultiWriter(io.Discard, c), strings.NewReader(body)); err != nil {
			panic(err)
		}
		if ok, reason := c.Result(); ok {
			fmt.Println("pass through unchanged")
		} else {
			fmt.Println("encrypt:", reason)
		}
	}
	// Output:
	// pass through unchanged
	// encrypt: armor: text after the END PGP MESSAGE line
}

// A header that rules out an encrypted body gives no Checker at all.
func ExampleNewChecker() {
	fmt.Println(encrypted.NewChecker("application/pkcs7-mime; smime-type=signed-data", "base64") == nil)
	fmt.Println(encrypted.NewChecker("text/html", "") == nil)
	fmt.Println(encrypted.NewChecker(`multipart/encrypted; protocol="application/pgp-encrypted"; boundary=b`, "") == nil)
	// Output:
	// true
	// true
	// false
}
