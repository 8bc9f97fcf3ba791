// Command cactusctl is the operator's tool for a Cactus Comments
// installation: it writes the appservice registration, checks a deployment
// end to end, lists sites, rebuilds the registry from the homeserver,
// lists and replays dead letters, and writes the NATS configuration. With
// the dev runner it also drives the demo.
//
// Exit codes: 0 success, 1 a check or an operation failed, 2 usage or
// configuration error.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/cactus-comments/appservice/pkg/config"
)

// Exit codes.
const (
	exitOK     = 0
	exitFailed = 1
	exitUsage  = 2
)

// usageError is a mistake on the command line or in the configuration.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// errSilent is a failure whose details the command already printed.
var errSilent = errors.New("failed")

// env is what a command runs with: its output streams and variables.
type env struct {
	stdout, stderr io.Writer
	lookup         func(string) (string, bool)
	// environ lists the variables as NAME=value, for the misspelt-name
	// warning.
	environ func() []string
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], &env{stdout: os.Stdout, stderr: os.Stderr, lookup: os.LookupEnv, environ: os.Environ})
	stop()
	os.Exit(code)
}

// run is main without the process: it returns the exit code. Every error
// is printed as one line (a configuration with several problems as one
// line per problem), prefixed with the command that failed.
func run(ctx context.Context, args []string, e *env) int {
	root := newRoot(e)
	root.SetArgs(longFlags(root, args))
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	name := "cactusctl"
	if cmd != nil {
		name = cmd.CommandPath()
	}
	if errors.Is(err, errSilent) {
		return exitFailed
	}
	var ps config.Problems
	if errors.As(err, &ps) {
		for _, p := range ps {
			fmt.Fprintf(e.stderr, "%s: configuration: %s\n", name, p)
		}
		return exitUsage
	}
	fmt.Fprintf(e.stderr, "%s: %s\n", name, describe(err))
	var ue usageError
	if errors.As(err, &ue) {
		return exitUsage
	}
	return exitFailed
}

// longFlags lets long flags be written with one dash as well as two
// (`-env FILE` as `--env FILE`), as Go tools and the first versions of
// this command took them: an argument "-name" or "-name=value" whose name
// is a long flag of some command gets its second dash. Single letters stay
// shorthands, and everything after "--" is left alone.
func longFlags(root *cobra.Command, args []string) []string {
	names := map[string]bool{}
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		c.Flags().VisitAll(func(f *pflag.Flag) { names[f.Name] = true })
		c.PersistentFlags().VisitAll(func(f *pflag.Flag) { names[f.Name] = true })
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	names["help"], names["version"] = true, true
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = a
		if a == "--" {
			copy(out[i:], args[i:])
			break
		}
		name, _, _ := strings.Cut(strings.TrimPrefix(a, "-"), "=")
		if strings.HasPrefix(a, "-") && !strings.HasPrefix(a, "--") && len(name) > 1 && names[name] {
			out[i] = "-" + a
		}
	}
	return out
}
