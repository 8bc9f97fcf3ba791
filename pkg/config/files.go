package config

import (
	"fmt"
	"io"
	"os"
)

// CheckFiles reports every NATS credential and TLS file that is named but
// cannot be read: a missing or unreadable file is a permanent error, which
// the NATS client would otherwise retry for ever. It is apart from
// Validate because it looks at this machine: a manifest's configuration
// is valid wherever its files are mounted.
func (c *Config) CheckFiles() error {
	var col collector
	for _, f := range []struct{ key, path string }{
		{"NATS_CREDS", c.NATSCreds}, {"NATS_NKEY", c.NATSNKey},
		{"NATS_CA", c.NATSCA}, {"NATS_CERT", c.NATSCert}, {"NATS_KEY", c.NATSKey},
	} {
		if f.path == "" {
			continue
		}
		if err := readable(f.path); err != nil {
			col.add(f.key, "cannot read the file: %v", err)
		}
	}
	return col.err()
}

// readable opens path and reads from it, so that a directory or a file
// without read permission fails here, not at the first connection.
func readable(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var b [1]byte
	if _, err := f.Read(b[:]); err != nil && err != io.EOF {
		return fmt.Errorf("read %s: %w", path, err)
	}
	return nil
}
