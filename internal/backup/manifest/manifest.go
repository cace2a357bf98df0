// Package manifest is the on-storage description of one backup: the
// manifest.json object, its canonical encoding, and manifest.json.sig, the
// signed note that vouches for it. docs/FORMAT.md is the public contract;
// this package is its reference implementation.
//
// Version policy: FormatVersion is "MAJOR.MINOR". A reader accepts every
// minor version of the majors it knows and ignores fields it does not know
// (minor versions only add fields); it refuses an unknown major version with
// ErrUnsupportedVersion rather than guess.
package manifest

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// FormatVersion is the version this package writes.
const FormatVersion = "1.0"

// formatMajor is the only major version this package reads.
const formatMajor = 1

// Object names inside a backup's directory.
const (
	ManifestName  = "manifest.json"
	SignatureName = "manifest.json.sig"
)

// Errors callers branch on.
var (
	// ErrUnsupportedVersion: the manifest's major format version is unknown.
	ErrUnsupportedVersion = errors.New("unsupported manifest format version")
	// ErrBadSignature: manifest.json.sig does not verify, or does not
	// vouch for this manifest.json.
	ErrBadSignature = errors.New("manifest signature does not verify")
	// ErrMalformed: manifest.json is not a valid manifest.
	ErrMalformed = errors.New("malformed manifest")
)

// Manifest describes one backup. It is identical on every target that holds
// a complete copy.
type Manifest struct {
	FormatVersion string `json:"format_version"`
	ID            string `json:"id"`
	Source        string `json:"source"`
	// Type is the source's config type: postgres, files, command, plugin:<name>.
	Type string `json:"type"`
	// Kind names the data format: pgdump, tar, or a command's extension.
	Kind     string    `json:"kind"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	Size     Size      `json:"size"`
	// Objects lists every data object of the backup with its digest.
	Objects     []Object    `json:"objects"`
	Compression Compression `json:"compression"`
	Encryption  Encryption  `json:"encryption"`
	SourceMeta  SourceMeta  `json:"source_meta"`
	Warnings    []string    `json:"warnings"`
	Opsd        Opsd        `json:"opsd"`
}

// Size counts bytes: Raw as read from the source, Stored as written to
// each target (after compression and encryption).
type Size struct {
	Raw    int64 `json:"raw"`
	Stored int64 `json:"stored"`
}

// Object is one stored data object.
type Object struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Compression describes the compression layer.
type Compression struct {
	Algorithm string `json:"algorithm"` // "zstd"
	Level     int    `json:"level"`     // the configured zstd level
	// Encoder names the klauspost/compress encoder level used for Level.
	Encoder string `json:"encoder,omitempty"`
}

// Encryption describes the encryption layer.
type Encryption struct {
	Algorithm  string   `json:"algorithm"` // "age" or "none"
	Recipients []string `json:"recipients,omitempty"`
}

// SourceMeta is what the source reported about the data it produced.
type SourceMeta struct {
	Postgres *PostgresMeta `json:"postgres,omitempty"`
	Files    *FilesMeta    `json:"files,omitempty"`
	Command  *CommandMeta  `json:"command,omitempty"`
}

// PostgresMeta describes a pg_dump.
type PostgresMeta struct {
	ServerVersion    string `json:"server_version"`     // e.g. "16.4"
	ServerVersionNum int    `json:"server_version_num"` // e.g. 160004
	Database         string `json:"database"`
	// WALLSN is pg_current_wal_lsn() (pg_last_wal_replay_lsn() on a standby)
	// taken in the transaction whose exported snapshot pg_dump used.
	WALLSN string `json:"wal_lsn"`
	// SnapshotTime is the server's clock when that snapshot was taken.
	SnapshotTime time.Time `json:"snapshot_time"`
	// Snapshot is the exported snapshot id pg_dump ran with.
	Snapshot      string `json:"snapshot,omitempty"`
	PGDumpVersion string `json:"pg_dump_version"`
}

// FilesMeta describes a tar of file trees.
type FilesMeta struct {
	Paths   []string `json:"paths"`
	Exclude []string `json:"exclude,omitempty"`
	Files   int64    `json:"files"`
	Dirs    int64    `json:"dirs"`
	Symlink int64    `json:"symlinks"`
	// IndexDigest is "sha256:<hex>" over the file index (see FORMAT.md).
	IndexDigest string `json:"index_digest"`
}

// CommandMeta describes a command's output.
type CommandMeta struct {
	Argv     []string `json:"argv"`
	ExitCode int      `json:"exit_code"`
}

// Opsd identifies the writer.
type Opsd struct {
	Version string `json:"version"`
	Commit  string `json:"commit,omitempty"`
}

// Dir is the backup's directory key, "<source>/<id>".
func (m *Manifest) Dir() string { return m.Source + "/" + m.ID }

// Key returns the key of object name inside the backup's directory.
func (m *Manifest) Key(name string) string { return m.Dir() + "/" + name }

// DataObject returns the backup's single data object.
func (m *Manifest) DataObject() (Object, error) {
	if len(m.Objects) != 1 {
		return Object{}, fmt.Errorf("%w: want 1 data object, have %d", ErrMalformed, len(m.Objects))
	}
	return m.Objects[0], nil
}

// DataName is the data object's name: data.<kind>.zst.age, or
// data.<kind>.zst without encryption.
func DataName(kind string, encrypted bool) string {
	if encrypted {
		return "data." + kind + ".zst.age"
	}
	return "data." + kind + ".zst"
}

var idRE = regexp.MustCompile(`^[0-9]{8}T[0-9]{6}Z-[0-9a-z]{4,32}$`)

// NewID returns a backup id that sorts by time: 20261123T074500Z-<random>.
func NewID(t time.Time) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return t.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
}

// CheckID reports whether id has the shape NewID produces.
func CheckID(id string) error {
	if !idRE.MatchString(id) {
		return fmt.Errorf("backup id %q: want YYYYMMDDTHHMMSSZ-<random>", id)
	}
	return nil
}

// Marshal returns the canonical JSON encoding of m: keys sorted, no
// insignificant whitespace, no HTML escaping, times in RFC 3339 UTC.
func Marshal(m *Manifest) ([]byte, error) {
	c := *m
	c.Started = c.Started.UTC()
	c.Finished = c.Finished.UTC()
	if c.Warnings == nil {
		c.Warnings = []string{}
	}
	if pg := c.SourceMeta.Postgres; pg != nil {
		p := *pg
		p.SnapshotTime = p.SnapshotTime.UTC()
		c.SourceMeta.Postgres = &p
	}
	raw, err := json.Marshal(&c)
	if err != nil {
		return nil, fmt.Errorf("encode manifest: %w", err)
	}
	return Canonical(raw)
}

// Canonical re-encodes a JSON document canonically.
func Canonical(raw []byte) ([]byte, error) {
	d := json.NewDecoder(bytes.NewReader(raw))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, fmt.Errorf("canonical json: %w", err)
	}
	var buf bytes.Buffer
	e := json.NewEncoder(&buf)
	e.SetEscapeHTML(false)
	// encoding/json writes map keys sorted and no whitespace.
	if err := e.Encode(v); err != nil {
		return nil, fmt.Errorf("canonical json: %w", err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// Unmarshal decodes manifest.json and checks its version and shape. It does
// not check the signature: use Verify for bytes read from storage.
func Unmarshal(raw []byte) (*Manifest, error) {
	var probe struct {
		FormatVersion string `json:"format_version"`
	}
	if err := json.Unmarshal(raw, &probe); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if err := CheckVersion(probe.FormatVersion); err != nil {
		return nil, err
	}
	var m Manifest
	if err := json.Unmarshal(raw, &m); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if err := m.validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

// CheckVersion accepts "1.x" and refuses anything else.
func CheckVersion(v string) error {
	major, _, ok := strings.Cut(v, ".")
	n, err := strconv.Atoi(major)
	if !ok || err != nil || n < 0 {
		return fmt.Errorf("%w: format_version %q is not MAJOR.MINOR", ErrMalformed, v)
	}
	if n != formatMajor {
		return fmt.Errorf("%w: manifest format %s, this opsd reads %d.x only (a newer opsd wrote it: upgrade opsd, or restore by hand following its docs/FORMAT.md)", ErrUnsupportedVersion, v, formatMajor)
	}
	return nil
}

func (m *Manifest) validate() error {
	var problems []string
	if err := CheckID(m.ID); err != nil {
		problems = append(problems, err.Error())
	}
	if m.Source == "" || strings.ContainsAny(m.Source, "/\\") || m.Source == "." || m.Source == ".." {
		problems = append(problems, fmt.Sprintf("source %q is not a valid name", m.Source))
	}
	for _, o := range m.Objects {
		if o.Name == "" || o.Name != path.Base(o.Name) || strings.HasPrefix(o.Name, ".") {
			problems = append(problems, fmt.Sprintf("object name %q is not a plain file name", o.Name))
		}
		if b, err := hex.DecodeString(o.SHA256); err != nil || len(b) != sha256.Size {
			problems = append(problems, fmt.Sprintf("object %s: sha256 %q is not 64 hex digits", o.Name, o.SHA256))
		}
	}
	if len(m.Objects) == 0 {
		problems = append(problems, "no objects")
	}
	switch m.Encryption.Algorithm {
	case "age", "none":
	default:
		problems = append(problems, fmt.Sprintf("encryption %q is neither age nor none", m.Encryption.Algorithm))
	}
	if m.Compression.Algorithm != "zstd" {
		problems = append(problems, fmt.Sprintf("compression %q is not zstd", m.Compression.Algorithm))
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %s", ErrMalformed, strings.Join(problems, "; "))
	}
	return nil
}
