package notify

import (
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"
)

type pair struct{ name, value string }

func sortedPairs(m map[string]string) []pair {
	out := make([]pair, 0, len(m))
	for k, v := range m {
		out = append(out, pair{k, v})
	}
	slices.SortFunc(out, func(a, b pair) int { return strings.Compare(a.name, b.name) })
	return out
}

// alertName names the group: its alertname label, else the first alert's.
func alertName(n *Notification) string {
	if v := n.GroupLabels["alertname"]; v != "" {
		return v
	}
	if v := n.CommonLabels["alertname"]; v != "" {
		return v
	}
	for _, a := range n.Alerts {
		if v := a.Labels["alertname"]; v != "" {
			return v
		}
	}
	return "alerts"
}

// notificationTitle is Alertmanager's default title: "[FIRING:2]
// BackupStale source=orders-db" or "[RESOLVED] BackupStale ...".
func notificationTitle(n *Notification) string {
	var b strings.Builder
	if n.Status == StatusResolved {
		b.WriteString("[RESOLVED] ")
	} else {
		fmt.Fprintf(&b, "[FIRING:%d] ", len(n.Firing()))
	}
	b.WriteString(alertName(n))
	for _, kv := range sortedPairs(n.GroupLabels) {
		if kv.name != "alertname" {
			b.WriteString(" " + kv.name + "=" + kv.value)
		}
	}
	return b.String()
}

// truncate cuts s to at most n runes, marking the cut with "…".
func truncate(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}
