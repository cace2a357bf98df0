package notify

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	htmltemplate "html/template"
	"log/slog"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net"
	"net/mail"
	"net/smtp"
	"net/textproto"
	"strings"
	texttemplate "text/template"
	"time"

	"github.com/opsd-dev/opsd/internal/config"
)

// emailNotifier sends one mail per notification through a smarthost and
// threads the mails of one alert group with In-Reply-To and References.
type emailNotifier struct {
	receiver    string
	conf        config.Email
	from        *mail.Address
	to          []*mail.Address
	host        string // of the smarthost, for TLS and PLAIN
	implicitTLS bool   // TLS from the first byte (port 465) rather than STARTTLS
	requireTLS  bool
	tlsBase     *tls.Config
	hostname    string
	domain      string // of Message-IDs
	store       MessageStore
	logger      *slog.Logger
	timeout     time.Duration
	redact      *redactor
	now         func() time.Time
}

func newEmail(receiver string, c *config.Email, d Deps) (*emailNotifier, error) {
	from, err := mail.ParseAddress(c.From)
	if err != nil {
		return nil, fmt.Errorf("from: %w", err)
	}
	if len(c.To) == 0 {
		return nil, errors.New("to is required")
	}
	var to []*mail.Address
	for i, s := range c.To {
		a, err := mail.ParseAddress(s)
		if err != nil {
			return nil, fmt.Errorf("to[%d]: %w", i, err)
		}
		to = append(to, a)
	}
	host, port, err := net.SplitHostPort(c.Smarthost)
	if err != nil || host == "" || port == "" {
		return nil, errors.New("smarthost is not host:port")
	}
	e := &emailNotifier{
		receiver:    receiver,
		conf:        *c,
		from:        from,
		to:          to,
		host:        host,
		implicitTLS: port == "465",
		requireTLS:  c.RequireTLS == nil || *c.RequireTLS,
		tlsBase:     d.TLSConfig,
		hostname:    d.Hostname,
		domain:      d.Hostname,
		store:       d.Messages,
		logger:      d.Logger.With("component", "notify", "receiver", receiver, "integration", "email"),
		timeout:     d.Timeout,
		redact:      &redactor{},
		now:         time.Now,
	}
	if _, dom, ok := strings.Cut(from.Address, "@"); ok && dom != "" {
		e.domain = dom
	}
	e.redact.add(string(c.AuthPassword))
	return e, nil
}

func (e *emailNotifier) Notify(ctx context.Context, n *Notification) (bool, error) {
	var password string
	if e.conf.AuthUsername != "" {
		p, err := readSecret(e.conf.AuthPassword, e.conf.AuthPasswordFile)
		if err != nil {
			return false, e.redact.err(fmt.Errorf("read email auth_password_file: %w", err))
		}
		password = p
	}
	red := e.redact.clone()
	red.add(password)
	retry, err := e.notify(ctx, n, password)
	return retry, red.err(err)
}

func (e *emailNotifier) notify(ctx context.Context, n *Notification, password string) (bool, error) {
	key := MessageKey{Receiver: e.receiver, Integration: "email", GroupKey: n.GroupKey}
	ref, found, err := e.store.GetMessage(ctx, key)
	if err != nil {
		return true, fmt.Errorf("look up the email thread of the group: %w", err)
	}
	resolved := n.Status == StatusResolved
	// As on Slack, a group firing again after it resolved starts anew.
	newThread := !found || ref.ID == "" || (ref.Resolved && !resolved)
	id := e.messageID(n, ref.Sent)
	root := ref.ID
	if newThread {
		root = id
	}
	var parent string
	if !newThread {
		parent = root
	}
	msg, err := e.message(n, id, parent)
	if err != nil {
		return false, fmt.Errorf("compose mail: %w", err)
	}
	if retry, err := e.send(ctx, password, msg); err != nil {
		return retry, err
	}
	put, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := e.store.PutMessage(put, key, MessageRef{ID: root, Sent: ref.Sent + 1, Resolved: resolved, Updated: e.now()}); err != nil {
		// The mail is out; a retry would send it twice.
		e.logger.Error("mail sent but its thread not remembered; the next mail of the group starts a new thread",
			"group_key", n.GroupKey, "message_id", id, "err", err)
	}
	return false, nil
}

// messageID is stable for one notification: a retry of it carries the
// same Message-ID, so a receiving system can drop the duplicate, while the
// next notification of the group (seq+1) gets a new one.
func (e *emailNotifier) messageID(n *Notification, seq int) string {
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00%d\x00%s\x00", e.receiver, n.GroupKey, seq, n.Status)
	for _, a := range n.Alerts {
		if a.Fingerprint != "" {
			fmt.Fprintf(h, "%s\x00", a.Fingerprint)
		} else {
			for _, kv := range sortedPairs(a.Labels) {
				fmt.Fprintf(h, "%s=%s\x00", kv.name, kv.value)
			}
		}
		fmt.Fprintf(h, "%s\x00%d\x00%d\x00", a.Status, a.StartsAt.UnixNano(), a.EndsAt.UnixNano())
	}
	return "<" + hex.EncodeToString(h.Sum(nil))[:32] + ".opsd@" + e.domain + ">"
}

// message renders the RFC 5322 mail: multipart/alternative, text then HTML.
func (e *emailNotifier) message(n *Notification, id, parent string) ([]byte, error) {
	var buf bytes.Buffer
	var boundary [15]byte
	_, _ = rand.Read(boundary[:])
	mw := multipart.NewWriter(&buf)
	if err := mw.SetBoundary("opsd-" + hex.EncodeToString(boundary[:])); err != nil {
		return nil, err
	}
	to := make([]string, len(e.to))
	for i, a := range e.to {
		to[i] = a.String()
	}
	header := func(k, v string) {
		fmt.Fprintf(&buf, "%s: %s\r\n", k, headerSafe(v))
	}
	header("From", e.from.String())
	header("To", strings.Join(to, ", "))
	header("Subject", mime.QEncoding.Encode("utf-8", headerSafe(notificationTitle(n))))
	header("Date", e.now().Format(time.RFC1123Z))
	header("Message-ID", id)
	if parent != "" {
		header("In-Reply-To", parent)
		header("References", parent)
	}
	header("MIME-Version", "1.0")
	header("Auto-Submitted", "auto-generated")
	header("X-Opsd-Receiver", mime.QEncoding.Encode("utf-8", receiverName(n, e.receiver)))
	header("X-Opsd-Status", n.Status)
	header("Content-Type", "multipart/alternative; boundary="+mw.Boundary())
	buf.WriteString("\r\n")

	view := newMailView(n, receiverName(n, e.receiver))
	var text, html bytes.Buffer
	if err := textTemplate.Execute(&text, view); err != nil {
		return nil, fmt.Errorf("render text part: %w", err)
	}
	if err := htmlTemplate.Execute(&html, view); err != nil {
		return nil, fmt.Errorf("render HTML part: %w", err)
	}
	for _, part := range []struct {
		ctype string
		body  []byte
	}{{"text/plain; charset=utf-8", text.Bytes()}, {"text/html; charset=utf-8", html.Bytes()}} {
		w, err := mw.CreatePart(textproto.MIMEHeader{
			"Content-Type":              {part.ctype},
			"Content-Transfer-Encoding": {"quoted-printable"},
		})
		if err != nil {
			return nil, err
		}
		qp := quotedprintable.NewWriter(w)
		if _, err := qp.Write(part.body); err != nil {
			return nil, err
		}
		if err := qp.Close(); err != nil {
			return nil, err
		}
	}
	if err := mw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// headerSafe removes line breaks, which would let a label inject headers.
func headerSafe(s string) string {
	return strings.NewReplacer("\r", " ", "\n", " ").Replace(s)
}

// send delivers msg through the smarthost. Failures to connect, TLS
// handshakes and 4xx replies are retryable; 5xx replies (a refused login,
// a rejected address) and a server that cannot meet require_tls are not.
func (e *emailNotifier) send(parent context.Context, password string, msg []byte) (bool, error) {
	ctx, cancel := context.WithTimeout(parent, e.timeout)
	defer cancel()
	fail := func(retry bool, format string, args ...any) (bool, error) {
		err := fmt.Errorf(format, args...)
		if done, err := ctxDone(parent, err); done {
			return false, err
		}
		return retry, err
	}

	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", e.conf.Smarthost)
	if err != nil {
		return fail(true, "connect to smarthost %s: %w", e.conf.Smarthost, err)
	}
	defer raw.Close()
	// net/smtp knows no context: a deadline bounds every read and write,
	// and cancellation unblocks them at once.
	if dl, ok := ctx.Deadline(); ok {
		_ = raw.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	conn := raw
	tlsConf := e.tlsConfig()
	if e.implicitTLS {
		tc := tls.Client(raw, tlsConf)
		if err := tc.HandshakeContext(ctx); err != nil {
			return fail(true, "TLS handshake with smarthost %s: %w", e.conf.Smarthost, err)
		}
		conn = tc
	}
	c, err := smtp.NewClient(conn, e.host)
	if err != nil {
		return fail(smtpRetry(err), "greeting of smarthost %s: %w", e.conf.Smarthost, err)
	}
	defer c.Close()
	if err := c.Hello(e.hostname); err != nil {
		return fail(smtpRetry(err), "EHLO to smarthost %s: %w", e.conf.Smarthost, err)
	}
	if !e.implicitTLS {
		if ok, _ := c.Extension("STARTTLS"); ok {
			if err := c.StartTLS(tlsConf); err != nil {
				return fail(smtpRetry(err), "STARTTLS with smarthost %s: %w", e.conf.Smarthost, err)
			}
		} else if e.requireTLS {
			return false, fmt.Errorf("smarthost %s does not offer STARTTLS and require_tls is true", e.conf.Smarthost)
		}
	}
	if e.conf.AuthUsername != "" {
		ok, mechs := c.Extension("AUTH")
		if !ok {
			return false, fmt.Errorf("smarthost %s offers no AUTH, but auth_username is set", e.conf.Smarthost)
		}
		auth, err := chooseAuth(mechs, e.conf.AuthUsername, password, e.host)
		if err != nil {
			return false, fmt.Errorf("smarthost %s: %w", e.conf.Smarthost, err)
		}
		if err := c.Auth(auth); err != nil {
			return fail(smtpRetry(err), "authenticate to smarthost %s as %q: %w", e.conf.Smarthost, e.conf.AuthUsername, err)
		}
	}
	if err := c.Mail(e.from.Address); err != nil {
		return fail(smtpRetry(err), "MAIL FROM %s: %w", e.from.Address, err)
	}
	for _, a := range e.to {
		if err := c.Rcpt(a.Address); err != nil {
			return fail(smtpRetry(err), "RCPT TO %s: %w", a.Address, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return fail(smtpRetry(err), "DATA: %w", err)
	}
	if _, err := w.Write(msg); err != nil {
		return fail(true, "write message: %w", err)
	}
	if err := w.Close(); err != nil {
		return fail(smtpRetry(err), "end of DATA: %w", err)
	}
	// The message is accepted; a failing QUIT changes nothing.
	_ = c.Quit()
	return false, nil
}

func (e *emailNotifier) tlsConfig() *tls.Config {
	var c *tls.Config
	if e.tlsBase != nil {
		c = e.tlsBase.Clone()
	} else {
		c = &tls.Config{}
	}
	c.ServerName = e.host
	if c.MinVersion == 0 {
		c.MinVersion = tls.VersionTLS12
	}
	return c
}

// smtpRetry: a 4xx reply is transient, a 5xx reply permanent, and an I/O
// error (the server went away) worth another attempt.
func smtpRetry(err error) bool {
	var te *textproto.Error
	if errors.As(err, &te) {
		return te.Code < 500
	}
	return true
}

// chooseAuth picks PLAIN, else LOGIN, from the mechanisms the server
// offers. Both send the password in clear inside the session, so both
// refuse to run without TLS except to a loopback smarthost.
func chooseAuth(offered, username, password, host string) (smtp.Auth, error) {
	mechs := strings.Fields(strings.ToUpper(offered))
	for _, m := range mechs {
		if m == "PLAIN" {
			return &plainAuth{username: username, password: password, host: host}, nil
		}
	}
	for _, m := range mechs {
		if m == "LOGIN" {
			return &loginAuth{username: username, password: password, host: host}, nil
		}
	}
	return nil, fmt.Errorf("no supported AUTH mechanism (PLAIN, LOGIN) among %q", offered)
}

func checkAuthServer(s *smtp.ServerInfo, host string) error {
	if s.Name != host {
		return errors.New("smarthost name changed during authentication")
	}
	if !s.TLS && !isLoopback(s.Name) {
		return errors.New("refusing to send credentials over an unencrypted connection")
	}
	return nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// plainAuth is SASL PLAIN (RFC 4616).
type plainAuth struct{ username, password, host string }

func (a *plainAuth) Start(s *smtp.ServerInfo) (string, []byte, error) {
	if err := checkAuthServer(s, a.host); err != nil {
		return "", nil, err
	}
	return "PLAIN", []byte("\x00" + a.username + "\x00" + a.password), nil
}

func (a *plainAuth) Next(_ []byte, more bool) ([]byte, error) {
	if more {
		return nil, errors.New("unexpected challenge after PLAIN")
	}
	return nil, nil
}

// loginAuth is the LOGIN mechanism (draft-murchison-sasl-login): the
// server prompts "Username:" then "Password:" and the client answers each.
type loginAuth struct {
	username, password, host string
	step                     int
}

func (a *loginAuth) Start(s *smtp.ServerInfo) (string, []byte, error) {
	if err := checkAuthServer(s, a.host); err != nil {
		return "", nil, err
	}
	a.step = 0
	return "LOGIN", nil, nil
}

func (a *loginAuth) Next(challenge []byte, more bool) ([]byte, error) {
	if !more {
		return nil, nil
	}
	a.step++
	prompt := strings.ToLower(string(challenge))
	switch {
	case strings.HasPrefix(prompt, "user"):
		return []byte(a.username), nil
	case strings.HasPrefix(prompt, "pass"):
		return []byte(a.password), nil
	case a.step == 1:
		return []byte(a.username), nil
	case a.step == 2:
		return []byte(a.password), nil
	}
	return nil, errors.New("unexpected LOGIN challenge")
}

// mailView is what the mail templates see.
type mailView struct {
	Title       string
	Receiver    string
	Status      string
	Firing      int
	Resolved    int
	GroupLabels []labelPair
	Alerts      []mailAlert
	More        int
	ExternalURL string
}

type labelPair struct{ Name, Value string }

type mailAlert struct {
	Status       string
	Title        string
	Description  string
	Labels       string
	Since        string
	Ended        string
	GeneratorURL string
	RunbookURL   string
}

const mailMaxAlerts = 100

func newMailView(n *Notification, receiver string) mailView {
	v := mailView{
		Title:       notificationTitle(n),
		Receiver:    receiver,
		Status:      strings.ToUpper(n.Status),
		Firing:      len(n.Firing()),
		Resolved:    len(n.Resolved()),
		ExternalURL: n.ExternalURL,
		More:        n.TruncatedAlerts,
	}
	for _, kv := range sortedPairs(n.GroupLabels) {
		if kv.name != "alertname" {
			v.GroupLabels = append(v.GroupLabels, labelPair{kv.name, kv.value})
		}
	}
	for i, a := range n.Alerts {
		if i == mailMaxAlerts {
			v.More += len(n.Alerts) - mailMaxAlerts
			break
		}
		ma := mailAlert{
			Status:       strings.ToUpper(a.Status),
			Title:        a.Annotations["summary"],
			Description:  a.Annotations["description"],
			GeneratorURL: a.GeneratorURL,
			RunbookURL:   a.Annotations["runbook_url"],
		}
		if ma.Title == "" {
			ma.Title = a.Labels["alertname"]
		}
		var labels []string
		for _, kv := range sortedPairs(a.Labels) {
			labels = append(labels, kv.name+"="+kv.value)
		}
		ma.Labels = strings.Join(labels, ", ")
		if !a.StartsAt.IsZero() {
			ma.Since = a.StartsAt.UTC().Format(time.RFC3339)
		}
		if a.Status == StatusResolved && !a.EndsAt.IsZero() {
			ma.Ended = a.EndsAt.UTC().Format(time.RFC3339)
		}
		v.Alerts = append(v.Alerts, ma)
	}
	return v
}

var textTemplate = texttemplate.Must(texttemplate.New("text").Parse(`{{.Title}}

{{.Firing}} firing, {{.Resolved}} resolved · receiver {{.Receiver}}
{{range .GroupLabels}}{{.Name}}: {{.Value}}
{{end}}{{range .Alerts}}
{{.Status}}  {{.Title}}
{{if .Description}}  {{.Description}}
{{end}}  Labels: {{.Labels}}
{{if .Since}}  Since: {{.Since}}
{{end}}{{if .Ended}}  Resolved: {{.Ended}}
{{end}}{{if .GeneratorURL}}  Source: {{.GeneratorURL}}
{{end}}{{if .RunbookURL}}  Runbook: {{.RunbookURL}}
{{end}}{{end}}{{if .More}}
… and {{.More}} more alert(s) not shown.
{{end}}
-- 
opsd{{if .ExternalURL}} · {{.ExternalURL}}{{end}}
`))

var htmlTemplate = htmltemplate.Must(htmltemplate.New("html").Parse(`<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{{.Title}}</title></head>
<body style="font-family: sans-serif">
<h2 style="color: {{if eq .Status "RESOLVED"}}#2e7d32{{else}}#c62828{{end}}">{{.Title}}</h2>
<p>{{.Firing}} firing, {{.Resolved}} resolved · receiver <b>{{.Receiver}}</b></p>
{{if .GroupLabels}}<table>{{range .GroupLabels}}<tr><td><b>{{.Name}}</b></td><td>{{.Value}}</td></tr>{{end}}</table>{{end}}
{{range .Alerts}}<hr>
<h3>{{.Status}} · {{.Title}}</h3>
{{if .Description}}<p>{{.Description}}</p>{{end}}
<p><small>{{.Labels}}</small></p>
<ul>{{if .Since}}<li>Since {{.Since}}</li>{{end}}{{if .Ended}}<li>Resolved {{.Ended}}</li>{{end}}{{if .GeneratorURL}}<li><a href="{{.GeneratorURL}}">Source</a></li>{{end}}{{if .RunbookURL}}<li><a href="{{.RunbookURL}}">Runbook</a></li>{{end}}</ul>
{{end}}{{if .More}}<p>… and {{.More}} more alert(s) not shown.</p>{{end}}
<hr><p><small>opsd{{if .ExternalURL}} · <a href="{{.ExternalURL}}">{{.ExternalURL}}</a>{{end}}</small></p>
</body></html>
`))
