package notify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/slack-go/slack"

	"github.com/opsd-dev/opsd/internal/config"
)

// Slack's Block Kit limits (https://api.slack.com/reference/block-kit).
const (
	slackHeaderMax  = 150  // characters of a header's plain_text
	slackSectionMax = 3000 // characters of a section's text
	slackFieldMax   = 2000 // characters of a section field
	slackMaxFields  = 10   // fields per section
	slackMaxAlerts  = 20   // alert sections per message; 50 blocks at most
	slackFallback   = 3000 // characters of the notification fallback text
)

// Slack API errors (ok:false) that a later attempt may not see.
var slackTransient = map[string]bool{
	"ratelimited":         true,
	"rate_limited":        true,
	"service_unavailable": true,
	"fatal_error":         true,
	"internal_error":      true,
	"request_timeout":     true,
	"team_added_to_org":   true,
}

// Slack API errors of chat.update after which a new message is posted:
// the old one was deleted, is too old to edit, or its channel is gone.
var slackMessageGone = map[string]bool{
	"message_not_found":   true,
	"cant_update_message": true,
	"edit_window_closed":  true,
	"channel_not_found":   true,
	"is_archived":         true,
}

type slackNotifier struct {
	receiver string
	conf     config.Slack
	apiURL   string
	client   *http.Client
	store    MessageStore
	logger   *slog.Logger
	timeout  time.Duration
	redact   *redactor
	now      func() time.Time
}

func newSlack(receiver string, c *config.Slack, d Deps) (*slackNotifier, error) {
	if c.Token == "" && c.TokenFile == "" {
		return nil, errors.New("token or token_file is required")
	}
	if c.Channel == "" {
		return nil, errors.New("channel is required")
	}
	apiURL := c.APIURL
	if apiURL == "" {
		apiURL = slack.APIURL
	}
	u, err := url.Parse(apiURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.New("api_url is not an http(s) URL")
	}
	// slack-go appends the method name ("chat.postMessage") to the URL.
	if !strings.HasSuffix(apiURL, "/") {
		apiURL += "/"
	}
	s := &slackNotifier{
		receiver: receiver,
		conf:     *c,
		apiURL:   apiURL,
		client:   d.HTTPClient,
		store:    d.Messages,
		logger:   d.Logger.With("component", "notify", "receiver", receiver, "integration", "slack"),
		timeout:  d.Timeout,
		redact:   &redactor{},
		now:      time.Now,
	}
	s.redact.add(string(c.Token))
	return s, nil
}

func (s *slackNotifier) Notify(ctx context.Context, n *Notification) (bool, error) {
	token, err := readSecret(s.conf.Token, s.conf.TokenFile)
	if err != nil {
		return false, s.redact.err(fmt.Errorf("read slack token_file: %w", err))
	}
	red := s.redact.clone()
	red.add(token)
	retry, err := s.notify(ctx, n, token)
	return retry, red.err(err)
}

func (s *slackNotifier) notify(parent context.Context, n *Notification, token string) (bool, error) {
	ctx, cancel := context.WithTimeout(parent, s.timeout)
	defer cancel()
	api := slack.New(token, slack.OptionAPIURL(s.apiURL), slack.OptionHTTPClient(s.client))
	key := MessageKey{Receiver: s.receiver, Integration: "slack", GroupKey: n.GroupKey}
	ref, found, err := s.store.GetMessage(ctx, key)
	if err != nil {
		return true, fmt.Errorf("look up the slack message of the group: %w", err)
	}
	text, blocks := slackMessage(n, receiverName(n, s.receiver), s.now())
	opts := []slack.MsgOption{slack.MsgOptionText(text, false), slack.MsgOptionBlocks(blocks...)}
	resolved := n.Status == StatusResolved

	// A group that fires again after it resolved gets a new message: an
	// edit far up the channel would go unseen.
	if found && ref.Channel != "" && ref.ID != "" && !(ref.Resolved && !resolved) {
		_, _, _, err := api.UpdateMessageContext(ctx, ref.Channel, ref.ID, opts...)
		if err == nil {
			s.remember(parent, key, MessageRef{
				Channel: ref.Channel, ID: ref.ID, Sent: ref.Sent + 1, Resolved: resolved, Updated: s.now(),
			})
			return false, nil
		}
		var se slack.SlackErrorResponse
		if !errors.As(err, &se) || !slackMessageGone[se.Err] {
			return s.classify(parent, fmt.Sprintf("slack chat.update of message %s in %s", ref.ID, ref.Channel), err)
		}
		s.logger.Info("slack message cannot be updated; posting a new one",
			"group_key", n.GroupKey, "channel", ref.Channel, "ts", ref.ID, "err", se.Err)
	}

	opts = append(opts, slack.MsgOptionDisableLinkUnfurl())
	channel, ts, err := api.PostMessageContext(ctx, s.conf.Channel, opts...)
	if err != nil {
		return s.classify(parent, fmt.Sprintf("slack chat.postMessage to %s", s.conf.Channel), err)
	}
	s.remember(parent, key, MessageRef{Channel: channel, ID: ts, Sent: ref.Sent + 1, Resolved: resolved, Updated: s.now()})
	return false, nil
}

// remember stores the message's ref. The message is out whatever happens
// here, so a failure is logged, not returned: a retry would post twice.
func (s *slackNotifier) remember(parent context.Context, key MessageKey, ref MessageRef) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), 10*time.Second)
	defer cancel()
	if err := s.store.PutMessage(ctx, key, ref); err != nil {
		s.logger.Error("slack message sent but not remembered; the next notification of the group posts a new one",
			"group_key", key.GroupKey, "channel", ref.Channel, "ts", ref.ID, "err", err)
	}
}

// classify decides whether a slack-go error is worth a retry.
func (s *slackNotifier) classify(parent context.Context, what string, err error) (bool, error) {
	err = fmt.Errorf("%s: %w", what, err)
	var (
		rl *slack.RateLimitedError
		sc slack.StatusCodeError
		se slack.SlackErrorResponse
	)
	switch {
	case errors.As(err, &rl):
		return true, &RetryAfterError{After: rl.RetryAfter, Err: err}
	case errors.As(err, &sc):
		return sc.Code == http.StatusTooManyRequests || sc.Code == http.StatusRequestTimeout || sc.Code >= 500, err
	case errors.As(err, &se):
		return slackTransient[se.Err], err
	}
	if done, err := ctxDone(parent, err); done {
		return false, err
	}
	// Transport errors, timeouts of this attempt, a body that is not
	// Slack's JSON (a proxy's error page).
	return true, err
}

// slackMessage renders n as the notification fallback text and Block Kit
// blocks: a header with status and alert name, the group's labels, a
// section per alert, and a context line linking back to opsd.
func slackMessage(n *Notification, receiver string, now time.Time) (string, []slack.Block) {
	title := notificationTitle(n)
	emoji := "🔥"
	if n.Status == StatusResolved {
		emoji = "✅"
	}
	blocks := []slack.Block{
		slack.NewHeaderBlock(slack.NewTextBlockObject(slack.PlainTextType, truncate(emoji+" "+title, slackHeaderMax), true, false)),
	}

	var fields []*slack.TextBlockObject
	for _, kv := range sortedPairs(n.GroupLabels) {
		if kv.name == "alertname" || len(fields) == slackMaxFields {
			continue
		}
		fields = append(fields, slack.NewTextBlockObject(slack.MarkdownType,
			truncate("*"+mrkdwnEscape(kv.name)+"*\n"+mrkdwnEscape(kv.value), slackFieldMax), false, false))
	}
	if len(fields) > 0 {
		blocks = append(blocks, slack.NewSectionBlock(nil, fields, nil))
	}
	blocks = append(blocks, slack.NewDividerBlock())

	for i, a := range n.Alerts {
		if i == slackMaxAlerts {
			break
		}
		blocks = append(blocks, slack.NewSectionBlock(
			slack.NewTextBlockObject(slack.MarkdownType, truncate(slackAlertText(a, n.CommonLabels), slackSectionMax), false, false),
			nil, nil))
	}
	if more := len(n.Alerts) - min(len(n.Alerts), slackMaxAlerts) + n.TruncatedAlerts; more > 0 {
		blocks = append(blocks, slack.NewContextBlock("", slack.NewTextBlockObject(slack.MarkdownType,
			fmt.Sprintf("… and %d more alert(s) not shown", more), false, false)))
	}

	ctx := []string{"receiver *" + mrkdwnEscape(receiver) + "*", "updated " + slackDate(now)}
	if n.ExternalURL != "" {
		ctx = append([]string{"<" + slackURL(n.ExternalURL) + "|opsd>"}, ctx...)
	}
	blocks = append(blocks, slack.NewContextBlock("", slack.NewTextBlockObject(slack.MarkdownType,
		strings.Join(ctx, " · "), false, false)))

	text := title
	if s := n.CommonAnnotations["summary"]; s != "" {
		text += ": " + s
	}
	return truncate(mrkdwnEscape(text), slackFallback), blocks
}

func slackAlertText(a Alert, common map[string]string) string {
	var b strings.Builder
	icon := ":red_circle:"
	if a.Status == StatusResolved {
		icon = ":large_green_circle:"
	}
	name := a.Annotations["summary"]
	if name == "" {
		name = a.Labels["alertname"]
	}
	fmt.Fprintf(&b, "%s *%s*", icon, mrkdwnEscape(name))
	if d := a.Annotations["description"]; d != "" {
		b.WriteString("\n" + mrkdwnEscape(truncate(d, 1000)))
	}
	var labels []string
	for _, kv := range sortedPairs(a.Labels) {
		if _, ok := common[kv.name]; ok {
			continue
		}
		labels = append(labels, "`"+strings.ReplaceAll(mrkdwnEscape(kv.name+"="+kv.value), "`", "'")+"`")
	}
	if len(labels) > 0 {
		b.WriteString("\n" + strings.Join(labels, " "))
	}
	var meta []string
	if !a.StartsAt.IsZero() {
		meta = append(meta, "since "+slackDate(a.StartsAt))
	}
	if a.Status == StatusResolved && !a.EndsAt.IsZero() {
		meta = append(meta, "resolved "+slackDate(a.EndsAt))
	}
	if a.GeneratorURL != "" {
		meta = append(meta, "<"+slackURL(a.GeneratorURL)+"|source>")
	}
	if u := a.Annotations["runbook_url"]; u != "" {
		meta = append(meta, "<"+slackURL(u)+"|runbook>")
	}
	if len(meta) > 0 {
		b.WriteString("\n" + strings.Join(meta, " · "))
	}
	return b.String()
}

// slackDate renders t in each reader's time zone, with UTC as fallback.
func slackDate(t time.Time) string {
	return fmt.Sprintf("<!date^%d^{date_short_pretty} {time}|%s>", t.Unix(), t.UTC().Format(time.RFC3339))
}

// mrkdwnEscape escapes the three characters Slack's mrkdwn requires.
func mrkdwnEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}

// slackURL makes a URL safe inside <url|label>.
func slackURL(u string) string {
	return strings.NewReplacer("<", "%3C", ">", "%3E", "|", "%7C", " ", "%20").Replace(u)
}
