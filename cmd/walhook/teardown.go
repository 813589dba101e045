package main

import (
	"context"
	"errors"
	"io"
)

func runTeardown(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return errors.New("teardown: not yet built")
}
