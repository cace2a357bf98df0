package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/opsd-dev/opsd/internal/audit"
	"github.com/opsd-dev/opsd/internal/config"
	"github.com/opsd-dev/opsd/internal/signing"
	"github.com/opsd-dev/opsd/internal/storage/location"
)

// runAuditVerify checks the audit log offline: exit 0 intact, 1 tampered,
// 2 cannot verify.
func runAuditVerify(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "audit verify")
	cfgFlag := fs.String("config", "", "config file, for data_dir, the key and witness targets")
	dir := fs.String("dir", "", "audit log directory (default <data_dir>/audit)")
	pubkey := fs.String("pubkey", "", "verifier key file or text (default <signing_key_file>.pub)")
	var witnessNames, witnessDirs stringList
	fs.Var(&witnessNames, "witness", "witness target named in the config (repeatable)")
	fs.Var(&witnessDirs, "witness-dir", "directory witness root (repeatable)")
	asJSON := fs.Bool("json", false, "machine-readable output")
	if err := parseFlags(fs, args, 0); err != nil {
		return err
	}
	var cfg *config.Config
	if *dir == "" || *pubkey == "" || len(witnessNames) > 0 {
		c, err := config.Load(configPath(e, *cfgFlag), e.getenv)
		if err != nil {
			if *dir == "" {
				return exitError{code: 2, err: fmt.Errorf("no --dir and the config cannot be read: %w", err)}
			}
		} else {
			cfg = c
		}
	}
	if *dir == "" {
		*dir = filepath.Join(cfg.DataDir, "audit")
	}
	var verifier note.Verifier
	if *pubkey == "" && cfg != nil {
		*pubkey = cfg.Audit.SigningKeyFile + ".pub"
	}
	if *pubkey != "" {
		v, err := signing.LoadVerifier(*pubkey)
		if err != nil {
			return exitError{code: 2, err: err}
		}
		verifier = v
	}
	var witnesses []audit.Witness
	for _, name := range witnessNames {
		if cfg == nil {
			return exitError{code: 2, err: fmt.Errorf("--witness %s needs the config", name)}
		}
		t, ok := cfg.Targets[name]
		if !ok {
			return usageError{fmt.Sprintf("--witness %s: no such target in the config", name)}
		}
		b, err := location.NewDefaultRegistry().Open(ctx, name, t, slog.New(slog.DiscardHandler))
		if err != nil {
			return exitError{code: 2, err: err}
		}
		defer b.Close()
		// Reading needs no lock settings.
		witnesses = append(witnesses, audit.NewBackendWitness(b, "", 0))
	}
	for _, d := range witnessDirs {
		witnesses = append(witnesses, audit.NewDirWitness(d))
	}
	rep, err := audit.Verify(ctx, *dir, verifier, witnesses)
	if err != nil {
		return exitError{code: 2, err: err}
	}
	if *asJSON {
		if err := json.NewEncoder(e.stdout).Encode(rep); err != nil {
			return err
		}
	} else if err := rep.WriteText(e.stdout); err != nil {
		return err
	}
	if code := rep.Status().ExitCode(); code != 0 {
		return exitError{code: code}
	}
	return nil
}

// auditPage is GET /api/v1/audit/entries.
type auditPage struct {
	Items []struct {
		Index int64           `json:"index"`
		Raw   []byte          `json:"raw"`
		Entry json.RawMessage `json:"entry"`
	} `json:"items"`
	NextCursor string `json:"next_cursor"`
}

// runAuditTail prints the newest entries, and with --follow new ones as
// they are appended.
func runAuditTail(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "audit tail")
	newClient := clientFlags(e, fs)
	n := fs.Int64("n", 20, "how many of the newest entries to print first")
	follow := fs.Bool("follow", false, "keep printing new entries")
	interval := fs.Duration("interval", time.Second, "poll interval with --follow")
	if err := parseFlags(fs, args, 0); err != nil {
		return err
	}
	c, err := newClient()
	if err != nil {
		return err
	}
	size, err := c.treeSize(ctx)
	if err != nil {
		return err
	}
	next := max(size-*n, 0)
	for {
		var page auditPage
		if err := c.do(ctx, "GET", fmt.Sprintf("/api/v1/audit/entries?from=%d&limit=1000", next), nil, &page); err != nil {
			return err
		}
		for _, it := range page.Items {
			fmt.Fprintf(e.stdout, "%s\n", it.Raw)
			next = it.Index + 1
		}
		if page.NextCursor != "" {
			continue
		}
		if !*follow {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(*interval):
		}
	}
}

// treeSize reads the tree size of the daemon's newest checkpoint.
func (c *apiClient) treeSize(ctx context.Context) (int64, error) {
	var b strings.Builder
	if err := c.do(ctx, "GET", "/api/v1/audit/checkpoint", nil, &b); err != nil {
		return 0, err
	}
	ck, err := audit.ParseCheckpoint(noteText(b.String()))
	if err != nil {
		return 0, fmt.Errorf("parse checkpoint: %w", err)
	}
	return ck.Size, nil
}

// noteText is the signed body of a note (before the blank line).
func noteText(signed string) string {
	body, _, _ := strings.Cut(signed, "\n\n")
	return body + "\n"
}

// runAuditProve fetches entry INDEX, its inclusion proof and the newest
// checkpoint from the daemon, and checks all three with the verifier key.
func runAuditProve(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "audit prove")
	newClient := clientFlags(e, fs)
	pubkey := fs.String("pubkey", "", "verifier key file or text (required: the proof is only as good as the key)")
	if err := parseFlags(fs, args, 1); err != nil {
		return err
	}
	if fs.NArg() != 1 || *pubkey == "" {
		return usageError{"usage: opsd audit prove --pubkey KEY INDEX"}
	}
	index, err := strconv.ParseInt(fs.Arg(0), 10, 64)
	if err != nil || index < 0 {
		return usageError{"INDEX must be a non-negative integer"}
	}
	verifier, err := signing.LoadVerifier(*pubkey)
	if err != nil {
		return exitError{code: 2, err: err}
	}
	c, err := newClient()
	if err != nil {
		return err
	}
	var signed strings.Builder
	if err := c.do(ctx, "GET", "/api/v1/audit/checkpoint", nil, &signed); err != nil {
		return err
	}
	ck, err := audit.OpenCheckpoint([]byte(signed.String()), verifier)
	if err != nil {
		return exitError{code: 1, err: fmt.Errorf("checkpoint: %w", err)}
	}
	if index >= ck.Size {
		return exitError{code: 1, err: fmt.Errorf("entry %d is not covered by the newest checkpoint (size %d); try again after the next checkpoint", index, ck.Size)}
	}
	var page auditPage
	if err := c.do(ctx, "GET", fmt.Sprintf("/api/v1/audit/entries?from=%d&limit=1", index), nil, &page); err != nil {
		return err
	}
	if len(page.Items) != 1 || page.Items[0].Index != index {
		return exitError{code: 1, err: fmt.Errorf("daemon did not return entry %d", index)}
	}
	var proof struct {
		Hashes []tlog.Hash `json:"hashes"`
	}
	if err := c.do(ctx, "GET", fmt.Sprintf("/api/v1/audit/entries/%d/proof?size=%d", index, ck.Size), nil, &proof); err != nil {
		return err
	}
	leaf := tlog.RecordHash(page.Items[0].Raw)
	if err := tlog.CheckRecord(proof.Hashes, ck.Size, ck.Root, index, leaf); err != nil {
		return exitError{code: 1, err: fmt.Errorf("entry %d is NOT in the signed tree of size %d: %w", index, ck.Size, err)}
	}
	fmt.Fprintf(e.stdout, "entry %d: %s\n", index, page.Items[0].Raw)
	fmt.Fprintf(e.stdout, "leaf hash %s\n", base64.StdEncoding.EncodeToString(leaf[:]))
	fmt.Fprintf(e.stdout, "proof (%d hashes):\n", len(proof.Hashes))
	for _, h := range proof.Hashes {
		fmt.Fprintf(e.stdout, "  %s\n", base64.StdEncoding.EncodeToString(h[:]))
	}
	fmt.Fprintf(e.stdout, "OK: entry %d is included in the tree of size %d, root %s, signed by %s\n",
		index, ck.Size, base64.StdEncoding.EncodeToString(ck.Root[:]), verifier.Name())
	return nil
}

// stringList is a repeatable string flag.
type stringList []string

func (s *stringList) String() string { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error {
	if v == "" {
		return errors.New("empty value")
	}
	*s = append(*s, v)
	return nil
}
