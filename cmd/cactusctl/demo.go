package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/cactus-comments/appservice/cmd/internal/demo"
)

// demoStep runs one step of the demo: args are the step and its
// arguments.
func demoStep(ctx context.Context, e *env, dir string, wait time.Duration, args []string) error {
	if dir == "" {
		dir = ".cactus-dev"
		if v, ok := e.lookup("CACTUS_DEV_DATA"); ok && v != "" {
			dir = v
		}
	}
	rest := args
	if len(rest) == 0 {
		return usagef("want a step: register, comment or ban (see cactusctl demo --help)")
	}
	need := map[string]int{"register": 2, "comment": 3, "ban": 3}
	n, ok := need[rest[0]]
	if !ok {
		return usagef("unknown step %q (want register, comment or ban)", rest[0])
	}
	if len(rest) < n || rest[0] == "register" && len(rest) > n {
		return usagef("%s: wrong number of arguments (see cactusctl demo --help)", rest[0])
	}
	d, err := demo.New(dir, e.stdout)
	if err != nil {
		return usageError{err}
	}
	d.Wait = wait
	switch rest[0] {
	case "register":
		_, err = d.Register(ctx, rest[1])
		if err == nil {
			fmt.Fprintf(e.stdout, "next: go run ./cmd/cactusctl demo%s comment %s hello First!\n", dataFlag(dir), rest[1])
		}
	case "comment":
		_, err = d.Comment(ctx, rest[1], rest[2], strings.Join(rest[3:], " "))
		if err == nil {
			fmt.Fprintf(e.stdout, "next: go run ./cmd/cactusctl demo%s ban %s %s\n", dataFlag(dir), rest[1], d.Info().Visitor.UserID)
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
	return " --data " + dir
}
