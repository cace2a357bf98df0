package notify_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/opsd-dev/opsd/internal/alerts/notify"
)

// verifySignature is what a webhook receiver runs on the raw request body
// and the X-Opsd-Signature header; docs/NOTIFICATIONS.md shows the same.
func verifySignature(secret, body []byte, header string) bool {
	hexSig, ok := strings.CutPrefix(header, "sha256=")
	if !ok {
		return false
	}
	sig, err := hex.DecodeString(hexSig)
	if err != nil {
		return false
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	return hmac.Equal(sig, mac.Sum(nil)) // constant time
}

// Verify the signature of a webhook body as a receiving service does.
func ExampleSign() {
	secret := []byte("whsec-example")
	body := []byte(`{"receiver":"chat","status":"firing","version":"4"}`)
	header := notify.Sign(secret, body) // what opsd sends as X-Opsd-Signature

	fmt.Println(header)
	fmt.Println(verifySignature(secret, body, header))
	fmt.Println(verifySignature(secret, []byte(`{"receiver":"chat","status":"resolved","version":"4"}`), header))
	// Output:
	// sha256=bb2eaccad31234417eb1abd6a29a7d050ba4dec3e35bb61a8a986fa0874f5109
	// true
	// false
}
