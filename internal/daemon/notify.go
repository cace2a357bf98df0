package daemon

import (
	"context"
	"log/slog"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"
)

// notifier speaks systemd's sd_notify protocol. Outside systemd
// (NOTIFY_SOCKET unset) every call is a no-op.
type notifier struct {
	log *slog.Logger
}

func (n notifier) send(state string) {
	if _, err := sd.SdNotify(false, state); err != nil {
		n.log.Warn("sd_notify", "state", state, "err", err)
	}
}

func (n notifier) ready()    { n.send(sd.SdNotifyReady) }
func (n notifier) stopping() { n.send(sd.SdNotifyStopping) }

// reloading tells systemd a reload started; systemd ≥ 253 wants the
// monotonic time with it (Type=notify-reload).
func (n notifier) reloading() {
	n.send(sd.SdNotifyReloading + "\n" + sd.SdNotifyMonotonicUsec())
}

// status sets the free-form status line shown by `systemctl status`.
func (n notifier) status(s string) { n.send("STATUS=" + s) }

// runWatchdog pets systemd's watchdog at half its interval while healthy
// reports nil. A wedged daemon stops petting and systemd restarts it.
func (n notifier) runWatchdog(ctx context.Context, healthy func(context.Context) error) error {
	interval, err := sd.SdWatchdogEnabled(false)
	if err != nil || interval <= 0 {
		<-ctx.Done()
		return nil
	}
	t := time.NewTicker(interval / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			hctx, cancel := context.WithTimeout(ctx, interval/4)
			err := healthy(hctx)
			cancel()
			if err != nil {
				n.log.Warn("not petting the systemd watchdog", "err", err)
				continue
			}
			n.send(sd.SdNotifyWatchdog)
		}
	}
}
