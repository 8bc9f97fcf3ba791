package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/cactus-comments/appservice/cmd/internal/appreg"
)

// writeRegistration writes the registration to out (- for stdout), the
// services' environment file to envOut and the tokens alone to secretsOut
// (empty: none).
func writeRegistration(e *env, p appreg.Params, out, envOut, secretsOut string, force bool) error {
	if p.ServerName == "" {
		return usagef("--server-name is required")
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
	for _, path := range []string{out, envOut, secretsOut} {
		if path == "" || path == "-" || force {
			continue
		}
		if _, err := os.Stat(path); err == nil {
			return usagef("%s exists; use --force to replace it (its tokens would change)", path)
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
	if secretsOut != "" {
		tokens := fmt.Sprintf("CACTUS_HS_TOKEN=%s\nCACTUS_AS_TOKEN=%s\n", g.Registration.HSToken, g.Registration.ASToken)
		if err := writeSecret(secretsOut, []byte(tokens)); err != nil {
			return err
		}
		fmt.Fprintf(e.stderr, "wrote %s (the two tokens, for a Secret)\n", secretsOut)
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
