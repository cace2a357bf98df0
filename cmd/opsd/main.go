// Command opsd keeps a team's data recoverable and proves it: scheduled,
// verified 3-2-1 backups, DR drills, alerts, cost and a signed audit log.
package main

import (
	"context"
	"os"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Getenv, os.Stdin, os.Stdout, os.Stderr))
}
