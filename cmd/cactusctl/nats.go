package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/natsconf"
	"github.com/cactus-comments/appservice/pkg/service"
)

// topologyEnsure creates or updates every stream, consumer and bucket.
func topologyEnsure(ctx context.Context, e *env, cf *cfgFlags) error {
	cfg, err := cf.natsOnly(e)
	if err != nil {
		return err
	}
	nc, _, err := cf.connectEnsured(ctx, cfg)
	if err != nil {
		return err
	}
	defer nc.Close()
	topo := service.Topology(cfg)
	fmt.Fprintf(e.stdout, "ensured %s, %s and %s (%s)\n",
		count(len(topo.Streams()), "stream"), count(len(topo.Consumers()), "consumer"), count(len(topo.Buckets()), "bucket"), count(max(cfg.NATSReplicas, 1), "replica"))
	return nil
}

// topologyMigrate moves what an earlier version left behind (see
// bus.Topology.MigrateRetired), saying how far it is on stderr.
func topologyMigrate(ctx context.Context, e *env, cf *cfgFlags) error {
	nc, js, err := cf.connectNATS(ctx, e)
	if err != nil {
		return err
	}
	defer nc.Close()
	// The bot's partitions do not depend on the replica count.
	m, err := (bus.Topology{}).MigrateRetired(ctx, js, func(s string) { fmt.Fprintln(e.stderr, s) })
	if err != nil {
		return err
	}
	if !m.ConsumerDeleted && m.TurnsPurged == 0 {
		fmt.Fprintln(e.stdout, "nothing to migrate")
		return nil
	}
	fmt.Fprintf(e.stdout, "moved %d bot events to their partitions; %d old order records deleted\n", m.Moved, m.TurnsPurged)
	return nil
}

// natsConfig prints the NATS users and their permissions.
func natsConfig(e *env, format string) error {
	switch format {
	case "server":
		_, err := fmt.Fprint(e.stdout, natsconf.ServerConfig(bus.Topology{}))
		return err
	case "helm":
		_, err := fmt.Fprint(e.stdout, natsconf.HelmValues(bus.Topology{}, natsconf.UsersSecret))
		return err
	}
	return usagef("--format %q: want server or helm", format)
}

// natsCredentials writes fresh passwords for every identity into dir: the
// NATS server's environment (nats.env) and each client's (<identity>.env,
// CACTUS_NATS_USER and CACTUS_NATS_PASSWORD), all readable by their owner
// only. Existing files are kept unless force: new passwords lock out every
// running service until both sides have them.
func natsCredentials(e *env, dir string, force bool) error {
	ids := bus.Identities()
	paths := []string{filepath.Join(dir, "nats.env")}
	for _, id := range ids {
		paths = append(paths, filepath.Join(dir, string(id)+".env"))
	}
	if !force {
		for _, p := range paths {
			if _, err := os.Stat(p); err == nil {
				return usagef("%s exists; use --force to replace the passwords (every service must then restart)", p)
			} else if !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	var server strings.Builder
	server.WriteString("# Passwords of the Cactus Comments NATS users, for the NATS server.\n")
	for _, id := range ids {
		var b [32]byte
		if _, err := rand.Read(b[:]); err != nil {
			return err
		}
		pw := hex.EncodeToString(b[:])
		fmt.Fprintf(&server, "%s=%s\n", natsconf.PasswordVar(id), pw)
		client := fmt.Sprintf("# The %s's NATS identity.\nCACTUS_NATS_USER=%s\nCACTUS_NATS_PASSWORD=%s\n", id, id, pw)
		if err := writeSecret(filepath.Join(dir, string(id)+".env"), []byte(client)); err != nil {
			return err
		}
	}
	if err := writeSecret(paths[0], []byte(server.String())); err != nil {
		return err
	}
	fmt.Fprintf(e.stderr, "wrote %s\n", strings.Join(paths, ", "))
	return nil
}
