package main

import (
	"context"

	"github.com/cactus-comments/appservice/pkg/config"
)

func cmdConfig(_ context.Context, e *env, args []string) error {
	f := newFlags(e, "config", "", "Lists every CACTUS_* variable the services and this tool read.")
	if err := parse(f, args); err != nil {
		return err
	}
	return config.Usage(e.stdout)
}
