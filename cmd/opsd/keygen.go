package main

import (
	"context"
	"fmt"
	"os"

	"filippo.io/age"

	"github.com/opsd-dev/opsd/internal/signing"
)

func runKeygen(_ context.Context, e *env, args []string) error {
	fs := newFlags(e, "keygen")
	out := fs.String("out", "", "write the signing key here (+ .pub and .hmac beside it)")
	name := fs.String("name", "", "key name = the audit log's origin (default opsd/<hostname>)")
	ageOut := fs.String("age", "", "also write a new age X25519 identity to this file")
	force := fs.Bool("force", false, "replace existing key files")
	if err := parseFlags(fs, args, 0); err != nil {
		return err
	}
	if *out == "" && *ageOut == "" {
		return usageError{"--out FILE is required (or --age FILE for an age identity only)"}
	}
	if *out != "" {
		keyName := *name
		if keyName == "" {
			host, err := os.Hostname()
			if err != nil {
				return fmt.Errorf("hostname for the default key name: %w (pass --name)", err)
			}
			keyName = "opsd/" + host
		}
		g, err := signing.Generate(keyName)
		if err != nil {
			return usageError{err.Error()}
		}
		if err := signing.WriteFiles(*out, g, *force); err != nil {
			return err
		}
		fmt.Fprintf(e.stderr, "wrote signing key %s (keep it secret), %s.hmac and %s.pub\n", *out, *out, *out)
		fmt.Fprintf(e.stderr, "set audit.origin to %q; publish the verifier key:\n", keyName)
		fmt.Fprintln(e.stdout, g.VerifierKey)
	}
	if *ageOut != "" {
		id, err := age.GenerateX25519Identity()
		if err != nil {
			return fmt.Errorf("generate age identity: %w", err)
		}
		flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
		if *force {
			flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
		}
		f, err := os.OpenFile(*ageOut, flags, 0o600)
		if err != nil {
			return fmt.Errorf("write age identity: %w", err)
		}
		_, werr := fmt.Fprintf(f, "# public key: %s\n%s\n", id.Recipient(), id)
		if err := f.Sync(); werr == nil {
			werr = err
		}
		if err := f.Close(); werr == nil {
			werr = err
		}
		if werr != nil {
			return fmt.Errorf("write age identity: %w", werr)
		}
		fmt.Fprintf(e.stderr, "wrote age identity %s (keep it offline: it decrypts every backup); recipient:\n", *ageOut)
		fmt.Fprintln(e.stdout, id.Recipient())
	}
	return nil
}
