// Command audit-verifier checks an opsd audit log through the HTTP API with
// nothing but the verifier key: it checks the checkpoint's signature, fetches
// every entry, rebuilds the RFC 6962 tree and compares its root.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

func main() {
	url := flag.String("url", "http://127.0.0.1:8470", "opsd base URL")
	token := flag.String("token", os.Getenv("OPSD_TOKEN"), "API bearer token")
	key := flag.String("key", "", "verifier key, <name>+<hash>+<base64>")
	flag.Parse()
	if err := verify(*url, *token, *key); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		os.Exit(1)
	}
}

func get(url, token string) ([]byte, error) {
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return io.ReadAll(resp.Body)
}

func verify(url, token, key string) error {
	v, err := note.NewVerifier(key)
	if err != nil {
		return err
	}
	msg, err := get(url+"/api/v1/audit/checkpoint", token)
	if err != nil {
		return err
	}
	n, err := note.Open(msg, note.VerifierList(v))
	if err != nil {
		return fmt.Errorf("checkpoint signature: %w", err)
	}
	// C2SP tlog-checkpoint: origin, tree size, base64 root hash.
	lines := strings.Split(n.Text, "\n")
	if len(lines) < 4 || lines[0] != v.Name() {
		return fmt.Errorf("malformed checkpoint %q", n.Text)
	}
	size, err := strconv.ParseInt(lines[1], 10, 64)
	if err != nil {
		return err
	}
	var stored []tlog.Hash // every stored hash, in tlog's order
	r := tlog.HashReaderFunc(func(idx []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(idx))
		for i, x := range idx {
			out[i] = stored[x]
		}
		return out, nil
	})
	for i := int64(0); i < size; {
		body, err := get(fmt.Sprintf("%s/api/v1/audit/entries?from=%d&limit=1000", url, i), token)
		if err != nil {
			return err
		}
		var page struct {
			Items []struct {
				Index int64
				Raw   []byte
			}
		}
		if err := json.Unmarshal(body, &page); err != nil {
			return err
		}
		if len(page.Items) == 0 {
			return fmt.Errorf("log ends at entry %d, checkpoint signs %d", i, size)
		}
		for _, it := range page.Items {
			if i == size {
				break
			}
			if it.Index != i {
				return fmt.Errorf("asked for entry %d, got %d", i, it.Index)
			}
			hs, err := tlog.StoredHashes(i, it.Raw, r) // leaf = SHA-256(0x00 || raw)
			if err != nil {
				return err
			}
			stored = append(stored, hs...)
			i++
		}
	}
	root, err := tlog.TreeHash(size, r)
	if err != nil {
		return err
	}
	if root.String() != lines[2] {
		return fmt.Errorf("root of %d entries is %s, checkpoint signs %s", size, root, lines[2])
	}
	fmt.Printf("OK: %d entries match the checkpoint signed by %s (root %s)\n", size, v.Name(), root)
	return nil
}
