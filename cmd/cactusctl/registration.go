package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/cactus-comments/appservice/cmd/internal/appreg"
)

func cmdRegistration(_ context.Context, e *env, args []string) error {
	f := newFlags(e, "registration", "-server-name NAME [flags]",
		"Writes an appservice registration file with fresh 64-hex tokens and namespaces escaped\n"+
			"for the server name, and the .env file our services need to match it. Existing files\n"+
			"are never overwritten without -force, so tokens in use are not lost by accident.")
	var p appreg.Params
	var out, envOut string
	var force bool
	f.StringVar(&p.ServerName, "server-name", "", "the homeserver's server name, as in user ids (required)")
	f.StringVar(&p.GatewayURL, "gateway-url", "http://localhost:8080", "URL at which the homeserver reaches the gateway")
	f.StringVar(&p.HomeserverURL, "homeserver-url", "", "URL at which our services reach the homeserver (default https://<server-name>)")
	f.StringVar(&p.ID, "id", appreg.DefaultID, "registration id")
	f.StringVar(&p.BotLocalpart, "bot-localpart", appreg.DefaultBotLocalpart, "localpart of the bot user (sender_localpart)")
	f.StringVar(&p.Prefix, "prefix", appreg.DefaultPrefix, "alias namespace prefix")
	f.StringVar(&out, "o", "-", "registration file to write; - for stdout")
	f.StringVar(&envOut, "env-out", "cactus.env", "environment file to write; empty to skip")
	f.BoolVar(&force, "force", false, "overwrite existing files")
	if err := parse(f, args); err != nil {
		return err
	}
	if f.NArg() > 0 {
		return usagef("unexpected arguments %q", f.Args())
	}
	if p.ServerName == "" {
		return usagef("-server-name is required")
	}
	g, err := appreg.Generate(p)
	if err != nil {
		return usageError{err}
	}
	y, err := g.YAML()
	if err != nil {
		return err
	}
	// Both files are checked before either is written, so a refusal leaves
	// nothing half done.
	for _, path := range []string{out, envOut} {
		if path == "" || path == "-" || force {
			continue
		}
		if _, err := os.Stat(path); err == nil {
			return usagef("%s exists; use -force to replace it (its tokens would change)", path)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	if envOut != "" {
		if err := writeSecret(envOut, g.EnvFile()); err != nil {
			return err
		}
		fmt.Fprintf(e.stderr, "wrote %s (CACTUS_* variables for the services)\n", envOut)
	}
	if out == "-" {
		_, err := e.stdout.Write(y)
		return err
	}
	if err := writeSecret(out, y); err != nil {
		return err
	}
	fmt.Fprintf(e.stderr, "wrote %s (give it to the homeserver)\n", out)
	return nil
}

// writeSecret writes a file readable by its owner only: it holds tokens.
func writeSecret(path string, data []byte) error {
	if err := os.WriteFile(path, data, 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	// WriteFile keeps the mode of an existing file; tighten it.
	if err := os.Chmod(path, 0o600); err != nil {
		return fmt.Errorf("chmod %s: %w", path, err)
	}
	return nil
}
