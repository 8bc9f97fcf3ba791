package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/cactus-comments/appservice/cmd/internal/demo"
)

func cmdDemo(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "demo", "[-data DIR] register SITE | comment SITE SECTION [TEXT...] | ban SITE USER [REASON...]",
		"Drives the dev runner's simulator as its demo users would, through the client-server API:\n"+
			"  register SITE                 the owner (@demo) asks the bot to register SITE and joins its moderation room\n"+
			"  comment SITE SECTION [TEXT]   the visitor (@visitor) opens the comment section (the appservice creates\n"+
			"                                the room on demand) and posts TEXT\n"+
			"  ban SITE USER [REASON]        the owner bans USER in the moderation room and waits until the ban has\n"+
			"                                reached every comment room of SITE the demo opened")
	dir := f.String("data", "", "the dev runner's data directory (default .cactus-dev, or CACTUS_DEV_DATA)")
	wait := f.Duration("wait", 30*time.Second, "how long to wait for the services at each step")
	if err := parse(f, args); err != nil {
		return err
	}
	if *dir == "" {
		*dir = ".cactus-dev"
		if v, ok := e.lookup("CACTUS_DEV_DATA"); ok && v != "" {
			*dir = v
		}
	}
	rest := f.Args()
	if len(rest) == 0 {
		f.Usage()
		return usagef("want a step: register, comment or ban")
	}
	need := map[string]int{"register": 2, "comment": 3, "ban": 3}
	n, ok := need[rest[0]]
	if !ok {
		return usagef("unknown step %q (want register, comment or ban)", rest[0])
	}
	if len(rest) < n || rest[0] == "register" && len(rest) > n {
		return usagef("%s: wrong number of arguments (see cactusctl demo -h)", rest[0])
	}
	d, err := demo.New(*dir, e.stdout)
	if err != nil {
		return usageError{err}
	}
	d.Wait = *wait
	switch rest[0] {
	case "register":
		_, err = d.Register(ctx, rest[1])
		if err == nil {
			fmt.Fprintf(e.stdout, "next: go run ./cmd/cactusctl demo%s comment %s hello First!\n", dataFlag(*dir), rest[1])
		}
	case "comment":
		_, err = d.Comment(ctx, rest[1], rest[2], strings.Join(rest[3:], " "))
		if err == nil {
			fmt.Fprintf(e.stdout, "next: go run ./cmd/cactusctl demo%s ban %s %s\n", dataFlag(*dir), rest[1], d.Info().Visitor.UserID)
		}
	case "ban":
		_, err = d.Ban(ctx, rest[1], rest[2], strings.Join(rest[3:], " "))
	}
	return err
}

func dataFlag(dir string) string {
	if dir == ".cactus-dev" {
		return ""
	}
	return " -data " + dir
}
