// Command hssim runs the homeserver simulator as a standalone server for the
// dev runner and load tools.
//
//	hssim -addr 127.0.0.1:8008 -server-name example.org -mode synapse \
//	      -room-version 12 -registration registration.yaml -user alice:secret
//
// Every flag has an environment variable (HSSIM_ADDR, HSSIM_SERVER_NAME,
// HSSIM_MODE, HSSIM_ROOM_VERSION, HSSIM_REGISTRATION as a comma-separated
// list, HSSIM_TIME_UNIT, HSSIM_USERS as a comma-separated list). The room
// version of new rooms defaults to the mode's: 10 for synapse and dendrite,
// 12 for conduit. It prints its URL on stdout and
// stops on SIGINT or SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/cactus-comments/appservice/pkg/buildinfo"
	"github.com/cactus-comments/appservice/pkg/hssim"
	"github.com/cactus-comments/appservice/pkg/registration"
)

type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	*l = append(*l, v)
	return nil
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "hssim:", err)
		os.Exit(2)
	}
}

func envOr(key, def string) string {
	if v, ok := os.LookupEnv(key); ok {
		return v
	}
	return def
}

func splitList(v string) []string {
	var out []string
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("hssim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", envOr("HSSIM_ADDR", "127.0.0.1:8008"), "listen address")
	serverName := fs.String("server-name", envOr("HSSIM_SERVER_NAME", "localhost"), "Matrix server name")
	mode := fs.String("mode", envOr("HSSIM_MODE", "synapse"), "homeserver to imitate: synapse, dendrite or conduit")
	roomVersion := fs.String("room-version", envOr("HSSIM_ROOM_VERSION", ""), "room version of new rooms, 1 to 12 (default: the mode's, 10 for synapse and dendrite, 12 for conduit)")
	unit := fs.Duration("time-unit", 0, "pusher backoff unit (default 1s; env HSSIM_TIME_UNIT)")
	verbose := fs.Bool("v", envOr("HSSIM_VERBOSE", "") != "", "debug logging")
	var regs, users listFlag
	fs.Var(&regs, "registration", "appservice registration file (repeatable)")
	fs.Var(&users, "user", "pre-register a password user as localpart:password (repeatable)")
	version := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *version {
		_, err := fmt.Fprintln(stdout, "hssim", buildinfo.Get())
		return err
	}
	if len(regs) == 0 {
		regs = splitList(os.Getenv("HSSIM_REGISTRATION"))
	}
	if len(users) == 0 {
		users = splitList(os.Getenv("HSSIM_USERS"))
	}
	if *unit == 0 {
		if v := os.Getenv("HSSIM_TIME_UNIT"); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil {
				return fmt.Errorf("HSSIM_TIME_UNIT: %w", err)
			}
			*unit = d
		}
	}
	m, err := hssim.ParseMode(*mode)
	if err != nil {
		return err
	}
	if *roomVersion != "" {
		if err := hssim.CheckRoomVersion(*roomVersion); err != nil {
			return fmt.Errorf("-room-version: %w", err)
		}
	}
	var loaded []*registration.Registration
	for _, path := range regs {
		r, err := registration.Load(path)
		if err != nil {
			return err
		}
		loaded = append(loaded, r)
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	srv, err := hssim.Start(ctx, hssim.Options{ServerName: *serverName, Mode: m, RoomVersion: *roomVersion, Addr: *addr, TimeUnit: *unit, Registrations: loaded, Logger: logger})
	if err != nil {
		return err
	}
	for _, u := range users {
		lp, pw, ok := strings.Cut(u, ":")
		if !ok || pw == "" {
			_ = srv.Close()
			return fmt.Errorf("-user %q: want localpart:password", lp)
		}
		uid, _, err := srv.RegisterUser(lp, pw)
		if err != nil {
			_ = srv.Close()
			return fmt.Errorf("register %s: %w", lp, err)
		}
		logger.Info("registered user", "user_id", uid)
	}
	logger.Info("new rooms", "room_version", srv.RoomVersion())
	fmt.Fprintln(stdout, srv.URL())
	<-ctx.Done()
	logger.Info("stopping")
	return srv.Close()
}
