// Command walhook tails a PostgreSQL WAL through logical replication, maps
// row changes to business events and delivers them as signed webhooks.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "walhook:", err)
	}
	os.Exit(ExitCode(err))
}
