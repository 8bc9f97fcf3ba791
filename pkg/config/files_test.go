package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckFiles(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(good, []byte("-----BEGIN CERTIFICATE-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	unreadable := filepath.Join(dir, "key.pem")
	if err := os.WriteFile(unreadable, []byte("key"), 0o000); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.creds")
	tests := []struct {
		name     string
		c        Config
		variable string // "" when every file reads
	}{
		{"none", Config{}, ""},
		{"readable ca", Config{NATSCA: good}, ""},
		{"missing ca", Config{NATSCA: missing}, "CACTUS_NATS_CA"},
		{"missing creds", Config{NATSCreds: missing}, "CACTUS_NATS_CREDS"},
		{"missing nkey", Config{NATSNKey: missing}, "CACTUS_NATS_NKEY"},
		{"missing cert", Config{NATSCert: missing, NATSKey: good}, "CACTUS_NATS_CERT"},
		{"directory as ca", Config{NATSCA: dir}, "CACTUS_NATS_CA"},
		{"key without permission", Config{NATSCert: good, NATSKey: unreadable}, "CACTUS_NATS_KEY"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.name == "key without permission" && os.Geteuid() == 0 {
				t.Skip("root reads every file")
			}
			err := tt.c.CheckFiles()
			if tt.variable == "" {
				if err != nil {
					t.Fatalf("CheckFiles = %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("CheckFiles accepted it")
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, tt.variable+": cannot read the file") || strings.Contains(msg, "\n") {
				t.Errorf("CheckFiles = %q, want one line about %s", msg, tt.variable)
			}
		})
	}
}
