package main

import (
	"context"
	"errors"
	"io"
)

func runMapping(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return errors.New("mapping: not yet built")
}
