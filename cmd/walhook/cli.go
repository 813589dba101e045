package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/walhook/walhook/config"
)

// Version is set at build time with -ldflags "-X main.Version=…".
var Version = "dev"

// Exit codes.
const (
	exitOK      = 0
	exitRuntime = 1
	exitUsage   = 2 // bad usage or bad config
)

// UsageError marks an error as bad usage or bad configuration (exit 2).
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

func usageErrorf(format string, args ...any) error {
	return &UsageError{Err: fmt.Errorf(format, args...)}
}

// ExitCode maps an error from Run to the process exit code.
func ExitCode(err error) int {
	if err == nil || errors.Is(err, ErrHelpShown) {
		return exitOK
	}
	var ue *UsageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	return exitRuntime
}

const usage = `walhook — PostgreSQL WAL to signed webhooks

Usage:
  walhook <command> [flags]

Commands:
  run        run the daemon: replicate, map, store, deliver, serve the API
  check      validate the config and report every missing database prerequisite
  setup      create the publication, the replication slot and the store schema
  teardown   drop the slot and publication (and with --store the store schema)
  mapping    mapping tools: 'walhook mapping test --changes FILE.jsonl'
  demo       a one-command demo on a throwaway PostgreSQL
  receive    a sample receiver that verifies and prints webhooks
  version    print the version

Configuration comes from --config FILE or $WALHOOK_CONFIG.
Exit codes: 0 ok, 1 runtime failure, 2 bad usage or bad config.
`

// commands are the names Run knows.
var commands = []string{"run", "check", "setup", "teardown", "mapping", "demo", "receive", "version", "help"}

// ErrHelpShown is returned when -h or --help asked a command for its help
// and it was printed: exit 0, nothing more to print.
var ErrHelpShown = errors.New("help shown")

// Run is the whole CLI; main only calls it. It never calls os.Exit.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return usageErrorf("no command given")
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "run":
		return runRun(ctx, rest, stdout, stderr)
	case "check":
		return runCheck(ctx, rest, stdout, stderr)
	case "setup":
		return runSetup(ctx, rest, stdout, stderr)
	case "teardown":
		return runTeardown(ctx, rest, stdout, stderr)
	case "mapping":
		return runMapping(ctx, rest, stdout, stderr)
	case "demo":
		return runDemo(ctx, rest, stdout, stderr)
	case "receive":
		return runReceive(ctx, rest, stdout, stderr)
	case "version", "--version", "-v":
		if len(rest) > 0 {
			return usageErrorf("walhook version: unexpected argument %q", rest[0])
		}
		fmt.Fprintf(stdout, "walhook %s\n", Version)
		return nil
	case "help", "--help", "-h":
		if len(rest) > 0 {
			return usageErrorf("walhook help: unexpected argument %q (for a command's help: walhook %s --help)", rest[0], rest[0])
		}
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	if strings.HasPrefix(cmd, "-") {
		// walhook --config FILE run: flags belong to the command.
		for _, a := range rest {
			if slices.Contains(commands, a) {
				return usageErrorf("unknown command %q: the command comes first: walhook %s %s …", cmd, a, cmd)
			}
		}
		return usageErrorf("unknown command %q: the command comes first: walhook <command> %s", cmd, strings.Join(args, " "))
	}
	return usageErrorf("unknown command %q", cmd)
}

// newFlagSet returns a flag set that reports errors as usage errors and
// prints its usage to stderr after a bad flag (parseFlags prints the help
// asked for with -h or --help to stdout).
func newFlagSet(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("walhook "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// onceValue refuses a flag's second occurrence: with two --config (a
// pasted command line, a wrapper script adding its own) one would win
// silently.
type onceValue struct {
	flag.Value
	name string
	seen bool
}

func (v *onceValue) Set(s string) error {
	if v.seen {
		return fmt.Errorf("--%s given twice", v.name)
	}
	v.seen = true
	return v.Value.Set(s)
}

// IsBoolFlag keeps --force working without a value.
func (v *onceValue) IsBoolFlag() bool {
	b, ok := v.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// parseFlags parses args and turns flag errors into usage errors. Help
// asked for (-h, --help) goes to stdout, as the top-level help does, so
// that walhook run --help | less works; after a bad flag the usage goes
// to stderr with the error.
func parseFlags(fs *flag.FlagSet, args []string, stdout io.Writer) error {
	if helpAsked(args) {
		out := fs.Output()
		fs.SetOutput(stdout)
		defer fs.SetOutput(out)
	}
	// Wrapped for Parse only: the help names a flag's type and default
	// from the value itself.
	restore := func() {
		fs.VisitAll(func(f *flag.Flag) {
			if v, ok := f.Value.(*onceValue); ok {
				f.Value = v.Value
			}
		})
	}
	fs.VisitAll(func(f *flag.Flag) { f.Value = &onceValue{Value: f.Value, name: f.Name} })
	usage := fs.Usage
	fs.Usage = func() {
		restore()
		usage()
	}
	err := fs.Parse(args)
	restore()
	fs.Usage = usage
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return ErrHelpShown // the flag set has printed its help
		}
		return &UsageError{Err: err}
	}
	if fs.NArg() > 0 {
		return usageErrorf("%s: unexpected argument %q", fs.Name(), fs.Arg(0))
	}
	return nil
}

// helpAsked reports whether args ask for help before they end the flags.
func helpAsked(args []string) bool {
	for _, a := range args {
		switch a {
		case "--":
			return false
		case "-h", "-help", "--h", "--help":
			return true
		}
	}
	return false
}

// configFlag registers --config on fs.
func configFlag(fs *flag.FlagSet) *string {
	return fs.String("config", "", "config file (default $WALHOOK_CONFIG)")
}

// loadConfig loads and validates the config named by --config or
// $WALHOOK_CONFIG. Every problem is a usage error (exit 2).
func loadConfig(path string) (*config.Config, error) {
	fromEnv := path == ""
	if fromEnv {
		path = os.Getenv("WALHOOK_CONFIG")
	}
	if strings.TrimSpace(path) == "" {
		return nil, usageErrorf("no config: pass --config FILE or set WALHOOK_CONFIG")
	}
	cfg, err := config.Load(path, os.LookupEnv)
	var problems *config.Errors
	if err != nil && fromEnv && !errors.As(err, &problems) {
		// Not in the file: the file itself, whose name nobody typed.
		err = fmt.Errorf("%w (named by $WALHOOK_CONFIG)", err)
	}
	if err != nil {
		return nil, &UsageError{Err: err}
	}
	cfg.BoundConnects()
	return cfg, nil
}
