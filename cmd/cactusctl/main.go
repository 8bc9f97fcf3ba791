// Command cactusctl is the operator's tool for a Cactus Comments
// installation: it writes the appservice registration, checks a deployment
// end to end, lists sites, rebuilds the registry from the homeserver, and
// lists and replays dead letters. With the dev runner it also drives the
// demo.
//
// Exit codes: 0 success, 1 a check or an operation failed, 2 usage or
// configuration error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
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
}

type command struct {
	name, args, summary string
	run                 func(ctx context.Context, e *env, args []string) error
}

func commands() []command {
	return []command{
		{"registration", "[flags]", "write an appservice registration (fresh tokens) and the matching .env file", cmdRegistration},
		{"doctor", "[flags]", "check configuration, homeserver, tokens, gateway ping, NATS, topology and lag", cmdDoctor},
		{"sites", "list [-json]", "list registered sites", cmdSites},
		{"registry", "rebuild [flags]", "rebuild the site and room registry from the homeserver", cmdRegistry},
		{"dlq", "list|replay|drop ...", "list, replay or drop dead letters", cmdDLQ},
		{"demo", "register|comment|ban ...", "drive the dev runner's demo (go run ./cmd/cactus-dev)", cmdDemo},
		{"config", "", "list every CACTUS_* variable with its default", cmdConfig},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], &env{stdout: os.Stdout, stderr: os.Stderr, lookup: os.LookupEnv})
	stop()
	os.Exit(code)
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: cactusctl <command> [arguments]   (cactusctl <command> -h for its flags)")
	fmt.Fprintln(w)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-13s %-24s %s\n", c.name, c.args, c.summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Commands that talk to NATS or the homeserver read the CACTUS_* variables from the")
	fmt.Fprintln(w, "environment and from the file given with -env (the environment wins).")
	fmt.Fprintln(w, "Exit codes: 0 ok, 1 check or operation failed, 2 usage or configuration error.")
}

// run is main without the process: it returns the exit code.
func run(ctx context.Context, args []string, e *env) int {
	if len(args) == 0 {
		usage(e.stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		usage(e.stdout)
		return exitOK
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, e, args[1:])
		var ue usageError
		switch {
		case err == nil:
			return exitOK
		case errors.Is(err, flag.ErrHelp):
			return exitOK
		case errors.As(err, &ue):
			fmt.Fprintf(e.stderr, "cactusctl %s: %v\n", c.name, err)
			return exitUsage
		case errors.Is(err, errSilent):
			return exitFailed
		default:
			fmt.Fprintf(e.stderr, "cactusctl %s: %v\n", c.name, err)
			return exitFailed
		}
	}
	fmt.Fprintf(e.stderr, "cactusctl: unknown command %q\n\n", args[0])
	usage(e.stderr)
	return exitUsage
}

// newFlags makes a flag set that reports errors instead of exiting, and
// prints its usage to stderr.
func newFlags(e *env, name, args, about string) *flag.FlagSet {
	fs := flag.NewFlagSet("cactusctl "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "usage: cactusctl %s %s\n\n%s\n", name, args, about)
		if hasFlags(fs) {
			fmt.Fprintln(e.stderr, "\nflags:")
			fs.PrintDefaults()
		}
	}
	return fs
}

func hasFlags(fs *flag.FlagSet) bool {
	n := 0
	fs.VisitAll(func(*flag.Flag) { n++ })
	return n > 0
}

// parse parses flags; a bad flag is a usage error, -h is flag.ErrHelp.
func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	return nil
}

// subcommand splits "list -json" into the verb and its arguments.
func subcommand(args []string, verbs ...string) (string, []string, error) {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") && args[0] != "-h" && args[0] != "-help" && args[0] != "--help" {
		return "", nil, usagef("want one of: %s", strings.Join(verbs, ", "))
	}
	switch args[0] {
	case "-h", "-help", "--help":
		return "help", nil, nil
	}
	for _, v := range verbs {
		if args[0] == v {
			return v, args[1:], nil
		}
	}
	return "", nil, usagef("unknown subcommand %q (want one of: %s)", args[0], strings.Join(verbs, ", "))
}
