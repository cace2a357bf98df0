package notify

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log"
	"math/big"
	"mime"
	"mime/multipart"
	"net"
	"net/mail"
	netsmtp "net/smtp"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"github.com/google/go-cmp/cmp"

	"github.com/opsd-dev/opsd/internal/config"
)

// selfSigned returns a server certificate for 127.0.0.1 and localhost and
// a pool that trusts it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "opsd test smtp"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}, pool
}

// received is one mail the test server accepted (or rejected, with err).
type received struct {
	From, AuthUser string
	To             []string
	TLS            bool
	Data           []byte
}

// smtpBackend is a go-smtp backend that keeps mails in memory and
// authenticates one user with the mechanisms in mechs.
type smtpBackend struct {
	user, pass string
	mechs      []string
	rejectData int // reject this many DATA commands with 451 first

	mu       sync.Mutex
	accepted []received
	rejected []received
}

func (b *smtpBackend) NewSession(c *smtp.Conn) (smtp.Session, error) {
	return &smtpSession{be: b, conn: c}, nil
}

func (b *smtpBackend) Accepted() []received {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]received(nil), b.accepted...)
}

type smtpSession struct {
	be   *smtpBackend
	conn *smtp.Conn
	cur  received
}

func (s *smtpSession) AuthMechanisms() []string { return s.be.mechs }

func (s *smtpSession) Auth(mech string) (sasl.Server, error) {
	check := func(user, pass string) error {
		if user != s.be.user || pass != s.be.pass {
			return smtp.ErrAuthFailed
		}
		s.cur.AuthUser = user
		return nil
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(_, user, pass string) error { return check(user, pass) }), nil
	case sasl.Login:
		return &loginServer{check: check}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

func (s *smtpSession) Mail(from string, _ *smtp.MailOptions) error {
	if s.be.user != "" && s.cur.AuthUser == "" {
		return smtp.ErrAuthRequired
	}
	s.cur.From = from
	return nil
}

func (s *smtpSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.cur.To = append(s.cur.To, to)
	return nil
}

func (s *smtpSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.cur.Data = b
	_, s.cur.TLS = s.conn.TLSConnectionState()
	s.be.mu.Lock()
	defer s.be.mu.Unlock()
	if s.be.rejectData > 0 {
		s.be.rejectData--
		s.be.rejected = append(s.be.rejected, s.cur)
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try again later"}
	}
	s.be.accepted = append(s.be.accepted, s.cur)
	return nil
}

func (s *smtpSession) Reset()        { s.cur = received{AuthUser: s.cur.AuthUser} }
func (s *smtpSession) Logout() error { return nil }

// loginServer is the server side of the LOGIN mechanism, which go-sasl
// no longer provides.
type loginServer struct {
	check      func(user, pass string) error
	step       int
	user, pass string
}

func (l *loginServer) Next(resp []byte) ([]byte, bool, error) {
	switch l.step {
	case 0:
		l.step = 1
		if resp == nil {
			return []byte("Username:"), false, nil
		}
		fallthrough
	case 1:
		l.user = string(resp)
		l.step = 2
		return []byte("Password:"), false, nil
	case 2:
		l.pass = string(resp)
		l.step = 3
		return nil, true, l.check(l.user, l.pass)
	}
	return nil, false, sasl.ErrUnexpectedClientResponse
}

type smtpMode struct {
	name     string
	implicit bool // implicit TLS, else STARTTLS (or none when noTLS)
	noTLS    bool
	mechs    []string
}

// startSMTP runs a real SMTP server on loopback and returns its address
// and the client TLS config that trusts it.
func startSMTP(t *testing.T, mode smtpMode, be *smtpBackend) (string, *tls.Config) {
	t.Helper()
	cert, pool := selfSigned(t)
	serverTLS := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	be.mechs = mode.mechs
	srv := smtp.NewServer(be)
	srv.Domain = "localhost"
	srv.ErrorLog = log.New(io.Discard, "", 0)
	srv.ReadTimeout = 10 * time.Second
	srv.WriteTimeout = 10 * time.Second
	if !mode.noTLS {
		srv.TLSConfig = serverTLS
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if mode.implicit {
		ln = tls.NewListener(ln, serverTLS)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	return addr, &tls.Config{RootCAs: pool}
}

func newTestEmail(t *testing.T, addr string, clientTLS *tls.Config, c config.Email, mode smtpMode, store MessageStore) *emailNotifier {
	t.Helper()
	c.Smarthost = addr
	if c.From == "" {
		c.From = "opsd <opsd@example.com>"
	}
	if len(c.To) == 0 {
		c.To = []string{"DBA Team <dba@example.com>", "oncall@example.com"}
	}
	e, err := newEmail("oncall", &c, withDefaults(Deps{TLSConfig: clientTLS, Messages: store, Timeout: 10 * time.Second, Hostname: "opsd-test"}))
	if err != nil {
		t.Fatal(err)
	}
	e.implicitTLS = mode.implicit
	e.now = func() time.Time { return t0 }
	return e
}

// parsedMail is a received mail, parsed with net/mail and mime/multipart.
type parsedMail struct {
	Header mail.Header
	Parts  map[string]string // media type → decoded body
}

func parseMail(t *testing.T, data []byte) parsedMail {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("mail.ReadMessage: %v\n%s", err, data)
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/alternative" {
		t.Fatalf("Content-Type = %q (%v), want multipart/alternative", m.Header.Get("Content-Type"), err)
	}
	out := parsedMail{Header: m.Header, Parts: map[string]string{}}
	mr := multipart.NewReader(m.Body, params["boundary"])
	var order []string
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		pt, pparams, _ := mime.ParseMediaType(p.Header.Get("Content-Type"))
		if pparams["charset"] != "utf-8" {
			t.Errorf("part %s charset = %q, want utf-8", pt, pparams["charset"])
		}
		// multipart.Reader decodes quoted-printable itself.
		b, err := io.ReadAll(p)
		if err != nil {
			t.Fatal(err)
		}
		out.Parts[pt] = string(b)
		order = append(order, pt)
	}
	if diff := cmp.Diff([]string{"text/plain", "text/html"}, order); diff != "" {
		t.Errorf("parts (-want +got):\n%s", diff)
	}
	return out
}

func TestEmailThreadsOverTLS(t *testing.T) {
	modes := []smtpMode{
		{name: "STARTTLS PLAIN", mechs: []string{sasl.Plain}},
		{name: "STARTTLS LOGIN", mechs: []string{sasl.Login}},
		{name: "implicit TLS PLAIN", implicit: true, mechs: []string{sasl.Plain}},
		{name: "implicit TLS LOGIN", implicit: true, mechs: []string{sasl.Login}},
	}
	for _, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			be := &smtpBackend{user: "opsd", pass: "s3cret-smtp-pass"}
			addr, clientTLS := startSMTP(t, mode, be)
			store := NewMemStore()
			e := newTestEmail(t, addr, clientTLS, config.Email{AuthUsername: "opsd", AuthPassword: "s3cret-smtp-pass"}, mode, store)
			ctx := context.Background()
			for i, n := range []*Notification{firing(1), firing(2), resolved(2)} {
				if retry, err := e.Notify(ctx, n); err != nil {
					t.Fatalf("mail %d: Notify() = %v, %v", i, retry, err)
				}
			}
			got := be.Accepted()
			if len(got) != 3 {
				t.Fatalf("server accepted %d mails, want 3", len(got))
			}
			var mails []parsedMail
			for _, r := range got {
				if !r.TLS || r.AuthUser != "opsd" || r.From != "opsd@example.com" {
					t.Errorf("session: TLS=%v auth=%q from=%q; want TLS, opsd, opsd@example.com", r.TLS, r.AuthUser, r.From)
				}
				if diff := cmp.Diff([]string{"dba@example.com", "oncall@example.com"}, r.To); diff != "" {
					t.Errorf("RCPT TO (-want +got):\n%s", diff)
				}
				mails = append(mails, parseMail(t, r.Data))
			}

			first := mails[0].Header.Get("Message-Id")
			if !strings.HasPrefix(first, "<") || !strings.HasSuffix(first, ".opsd@example.com>") {
				t.Errorf("Message-ID = %q, want <hex.opsd@example.com>", first)
			}
			if v := mails[0].Header.Get("In-Reply-To"); v != "" {
				t.Errorf("first mail In-Reply-To = %q, want none", v)
			}
			ids := map[string]bool{}
			for i, m := range mails {
				ids[m.Header.Get("Message-Id")] = true
				if i == 0 {
					continue
				}
				if got := m.Header.Get("In-Reply-To"); got != first {
					t.Errorf("mail %d In-Reply-To = %q, want %q", i, got, first)
				}
				if got := m.Header.Get("References"); got != first {
					t.Errorf("mail %d References = %q, want %q", i, got, first)
				}
			}
			if len(ids) != 3 {
				t.Errorf("Message-IDs %v not distinct", ids)
			}

			dec := new(mime.WordDecoder)
			var subjects []string
			for _, m := range mails {
				s, err := dec.DecodeHeader(m.Header.Get("Subject"))
				if err != nil {
					t.Fatal(err)
				}
				subjects = append(subjects, s)
			}
			wantSubjects := []string{
				"[FIRING:1] BackupStale source=orders-db",
				"[FIRING:2] BackupStale source=orders-db",
				"[RESOLVED] BackupStale source=orders-db",
			}
			if diff := cmp.Diff(wantSubjects, subjects); diff != "" {
				t.Errorf("subjects (-want +got):\n%s", diff)
			}
			h := mails[1].Header
			for k, want := range map[string]string{
				"From":           `"opsd" <opsd@example.com>`,
				"To":             `"DBA Team" <dba@example.com>, <oncall@example.com>`,
				"Mime-Version":   "1.0",
				"Auto-Submitted": "auto-generated",
				"X-Opsd-Status":  "firing",
				"Date":           t0.Format(time.RFC1123Z),
			} {
				if got := h.Get(k); got != want {
					t.Errorf("header %s = %q, want %q", k, got, want)
				}
			}

			text, html := mails[1].Parts["text/plain"], mails[1].Parts["text/html"]
			for _, want := range []string{
				"[FIRING:2] BackupStale source=orders-db",
				"2 firing, 0 resolved",
				"FIRING  Backups of orders-db are stale",
				"No backup for 2h <b>&</b> counting.",
				"Labels: alertname=BackupStale, severity=page, source=orders-db, target=offsite-s3",
				"Since: 2026-11-23T07:46:00Z",
				"Source: https://opsd.example.com:8470/ui/rules/BackupStale",
				"opsd · https://opsd.example.com:8470",
			} {
				if !strings.Contains(text, want) {
					t.Errorf("text part lacks %q:\n%s", want, text)
				}
			}
			for _, want := range []string{
				"No backup for 2h &lt;b&gt;&amp;&lt;/b&gt; counting.",
				`<a href="https://opsd.example.com:8470/ui/rules/BackupStale">Source</a>`,
				`<a href="https://opsd.example.com:8470">`,
			} {
				if !strings.Contains(html, want) {
					t.Errorf("HTML part lacks %q:\n%s", want, html)
				}
			}
			if !strings.Contains(mails[2].Parts["text/plain"], "Resolved: 2026-11-23T08:45:00Z") {
				t.Errorf("resolved mail lacks the resolution time:\n%s", mails[2].Parts["text/plain"])
			}
		})
	}
}

func TestEmailNewThreadAfterResolve(t *testing.T) {
	mode := smtpMode{name: "STARTTLS", mechs: []string{sasl.Plain}}
	be := &smtpBackend{}
	addr, clientTLS := startSMTP(t, mode, be)
	e := newTestEmail(t, addr, clientTLS, config.Email{}, mode, NewMemStore())
	for _, n := range []*Notification{firing(1), resolved(1), firing(1)} {
		if _, err := e.Notify(context.Background(), n); err != nil {
			t.Fatal(err)
		}
	}
	got := be.Accepted()
	m0, m1, m2 := parseMail(t, got[0].Data), parseMail(t, got[1].Data), parseMail(t, got[2].Data)
	if m1.Header.Get("In-Reply-To") != m0.Header.Get("Message-Id") {
		t.Errorf("resolved mail does not reply to the first")
	}
	if v := m2.Header.Get("In-Reply-To"); v != "" {
		t.Errorf("firing again after resolve: In-Reply-To = %q, want a new thread", v)
	}
	if m2.Header.Get("Message-Id") == m0.Header.Get("Message-Id") {
		t.Errorf("new thread reuses Message-ID %s", m0.Header.Get("Message-Id"))
	}
}

func TestEmailRetryKeepsMessageID(t *testing.T) {
	mode := smtpMode{name: "STARTTLS", mechs: []string{sasl.Plain}}
	be := &smtpBackend{rejectData: 1}
	addr, clientTLS := startSMTP(t, mode, be)
	e := newTestEmail(t, addr, clientTLS, config.Email{}, mode, NewMemStore())
	retry, err := e.Notify(context.Background(), firing(1))
	if err == nil || !retry {
		t.Fatalf("Notify(451 on DATA) = %v, %v; want retry=true and an error", retry, err)
	}
	if retry, err := e.Notify(context.Background(), firing(1)); err != nil {
		t.Fatalf("retry: Notify() = %v, %v", retry, err)
	}
	// A repeat of the same notification is a new mail.
	if _, err := e.Notify(context.Background(), firing(1)); err != nil {
		t.Fatal(err)
	}
	be.mu.Lock()
	rejected := be.rejected[0]
	be.mu.Unlock()
	acc := be.Accepted()
	idRejected := parseMail(t, rejected.Data).Header.Get("Message-Id")
	idRetried := parseMail(t, acc[0].Data).Header.Get("Message-Id")
	idRepeat := parseMail(t, acc[1].Data).Header.Get("Message-Id")
	if idRejected != idRetried {
		t.Errorf("retried Message-ID = %s, want the first attempt's %s", idRetried, idRejected)
	}
	if idRepeat == idRetried {
		t.Errorf("repeat notification reuses Message-ID %s", idRepeat)
	}
}

func TestEmailFailures(t *testing.T) {
	const password = "s3cret-smtp-pass"
	tests := []struct {
		name      string
		mode      smtpMode
		conf      config.Email
		wantRetry bool
		wantErr   string
	}{
		{
			name:    "wrong password PLAIN",
			mode:    smtpMode{mechs: []string{sasl.Plain}},
			conf:    config.Email{AuthUsername: "opsd", AuthPassword: "wrong-" + password},
			wantErr: "535",
		},
		{
			name:    "wrong password LOGIN implicit TLS",
			mode:    smtpMode{implicit: true, mechs: []string{sasl.Login}},
			conf:    config.Email{AuthUsername: "opsd", AuthPassword: "wrong-" + password},
			wantErr: "535",
		},
		{
			name:    "no supported mechanism",
			mode:    smtpMode{mechs: []string{"CRAM-MD5"}},
			conf:    config.Email{AuthUsername: "opsd", AuthPassword: password},
			wantErr: "no supported AUTH mechanism",
		},
		{
			name:    "require_tls without STARTTLS",
			mode:    smtpMode{noTLS: true},
			conf:    config.Email{},
			wantErr: "does not offer STARTTLS",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			be := &smtpBackend{user: "opsd", pass: password}
			addr, clientTLS := startSMTP(t, tt.mode, be)
			e := newTestEmail(t, addr, clientTLS, tt.conf, tt.mode, NewMemStore())
			retry, err := e.Notify(context.Background(), firing(1))
			if err == nil {
				t.Fatalf("Notify() error = nil, want one")
			}
			if retry != tt.wantRetry {
				t.Errorf("Notify() retry = %v, want %v (err %v)", retry, tt.wantRetry, err)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Notify() error = %q, want it to contain %q", err, tt.wantErr)
			}
			if strings.Contains(err.Error(), password) {
				t.Errorf("Notify() error %q contains the password", err)
			}
			if n := len(be.Accepted()); n != 0 {
				t.Errorf("server accepted %d mails, want 0", n)
			}
		})
	}
}

func TestEmailInClearToLoopback(t *testing.T) {
	mode := smtpMode{noTLS: true}
	be := &smtpBackend{}
	addr, _ := startSMTP(t, mode, be)
	no := false
	e := newTestEmail(t, addr, nil, config.Email{RequireTLS: &no}, mode, NewMemStore())
	if _, err := e.Notify(context.Background(), firing(1)); err != nil {
		t.Fatal(err)
	}
	if got := be.Accepted(); len(got) != 1 || got[0].TLS {
		t.Errorf("accepted = %+v, want one mail in clear", got)
	}
}

func TestEmailConnectionRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	e := newTestEmail(t, addr, nil, config.Email{}, smtpMode{}, NewMemStore())
	retry, err := e.Notify(context.Background(), firing(1))
	if err == nil || !retry {
		t.Errorf("Notify(connection refused) = %v, %v; want retry=true and an error", retry, err)
	}
}

func TestEmailUntrustedCertificateIsRetryable(t *testing.T) {
	mode := smtpMode{implicit: true}
	be := &smtpBackend{}
	addr, _ := startSMTP(t, mode, be)
	e := newTestEmail(t, addr, &tls.Config{RootCAs: x509.NewCertPool()}, config.Email{}, mode, NewMemStore())
	retry, err := e.Notify(context.Background(), firing(1))
	if err == nil || !retry || !strings.Contains(err.Error(), "TLS handshake") {
		t.Errorf("Notify(untrusted cert) = %v, %v; want retry=true and a TLS handshake error", retry, err)
	}
}

func TestEmailServerHangsUntilContextEnds(t *testing.T) {
	// A server that accepts and never greets.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		c, err := ln.Accept()
		if err == nil {
			_, _ = io.Copy(io.Discard, c)
			c.Close()
		}
	})
	defer func() { ln.Close(); wg.Wait() }()
	e := newTestEmail(t, ln.Addr().String(), nil, config.Email{}, smtpMode{}, NewMemStore())
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	retry, err := e.Notify(ctx, firing(1))
	if err == nil || retry {
		t.Errorf("Notify(ctx ends) = %v, %v; want retry=false and an error", retry, err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Notify(ctx ends) error = %v, want context.DeadlineExceeded in its chain", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Notify took %v after ctx ended", d)
	}
}

func TestEmailPasswordFile(t *testing.T) {
	mode := smtpMode{mechs: []string{sasl.Login}}
	be := &smtpBackend{user: "opsd", pass: "from-file-pass"}
	addr, clientTLS := startSMTP(t, mode, be)
	file := filepath.Join(t.TempDir(), "smtp")
	if err := os.WriteFile(file, []byte("from-file-pass\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newTestEmail(t, addr, clientTLS, config.Email{AuthUsername: "opsd", AuthPasswordFile: file}, mode, NewMemStore())
	if _, err := e.Notify(context.Background(), firing(1)); err != nil {
		t.Fatal(err)
	}
	if n := len(be.Accepted()); n != 1 {
		t.Errorf("accepted = %d, want 1", n)
	}
}

func TestNewEmailRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name string
		give config.Email
	}{
		{"bad from", config.Email{From: "not an address", To: []string{"a@example.com"}, Smarthost: "h:25"}},
		{"bad to", config.Email{From: "a@example.com", To: []string{"nope"}, Smarthost: "h:25"}},
		{"no to", config.Email{From: "a@example.com", Smarthost: "h:25"}},
		{"no port", config.Email{From: "a@example.com", To: []string{"a@example.com"}, Smarthost: "h"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New("x", config.Receiver{Email: &tt.give}, Deps{}); err == nil {
				t.Errorf("New(%+v) = nil error, want one", tt.give)
			}
		})
	}
}

func TestLoginAuthRefusesClearTextToRemote(t *testing.T) {
	if err := checkAuthServer(&netsmtp.ServerInfo{Name: "smtp.example.com", TLS: false}, "smtp.example.com"); err == nil {
		t.Errorf("checkAuthServer(no TLS, remote) = nil, want an error")
	}
	if err := checkAuthServer(&netsmtp.ServerInfo{Name: "127.0.0.1", TLS: false}, "127.0.0.1"); err != nil {
		t.Errorf("checkAuthServer(no TLS, loopback) = %v, want nil", err)
	}
	if err := checkAuthServer(&netsmtp.ServerInfo{Name: "evil.example.com", TLS: true}, "smtp.example.com"); err == nil {
		t.Errorf("checkAuthServer(other host) = nil, want an error")
	}
}
