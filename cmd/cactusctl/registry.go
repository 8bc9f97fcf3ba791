package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/cactus-comments/appservice/cmd/internal/rebuild"
	"github.com/cactus-comments/appservice/pkg/registry"
)

// openRegistry connects to NATS and opens the registry; closeNATS ends
// the connection.
func openRegistry(ctx context.Context, e *env, cf *cfgFlags) (reg *registry.Registry, closeNATS func(), err error) {
	nc, js, err := cf.connectNATS(ctx, e)
	if err != nil {
		return nil, nil, err
	}
	if reg, err = registry.Open(ctx, js); err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("%w (has a service created the topology yet?)", err)
	}
	return reg, nc.Close, nil
}

// sitesList prints the registry's sites as a table or JSON.
func sitesList(ctx context.Context, e *env, cf *cfgFlags, asJSON bool) error {
	reg, closeNATS, err := openRegistry(ctx, e, cf)
	if err != nil {
		return err
	}
	defer closeNATS()
	sites, err := reg.Sites(ctx)
	if err != nil {
		return err
	}
	type row struct {
		*registry.Site
		CommentRooms int `json:"comment_rooms"`
	}
	rows := make([]row, 0, len(sites))
	for _, s := range sites {
		rooms, err := reg.Rooms(ctx, s.Name)
		if err != nil {
			return err
		}
		rows = append(rows, row{s, len(rooms)})
	}
	if asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(rows)
	}
	if len(rows) == 0 {
		fmt.Fprintln(e.stdout, "no sites registered")
		return nil
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SITE\tOWNER\tMODERATION ROOM\tCOMMENT ROOMS\tBANS\tCREATED")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%s\n", r.Name, orDash(r.Owner), orDash(r.ModerationRoom), r.CommentRooms, len(r.Bans), r.CreatedAt.Format("2006-01-02 15:04"))
	}
	return tw.Flush()
}

// siteRooms prints one site's comment rooms as a table or JSON.
func siteRooms(ctx context.Context, e *env, cf *cfgFlags, site string, asJSON bool) error {
	reg, closeNATS, err := openRegistry(ctx, e, cf)
	if err != nil {
		return err
	}
	defer closeNATS()
	if _, err := reg.Site(ctx, site); err != nil {
		if errors.Is(err, registry.ErrNotFound) {
			return fmt.Errorf("no site %q in the registry (cactusctl sites list shows them)", site)
		}
		return err
	}
	rooms, err := reg.Rooms(ctx, site)
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		if rooms == nil {
			rooms = []registry.Room{}
		}
		return enc.Encode(rooms)
	}
	if len(rooms) == 0 {
		fmt.Fprintf(e.stdout, "site %s has no comment rooms yet\n", site)
		return nil
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SECTION\tROOM\tALIAS\tVERSION\tCREATED")
	for _, r := range rooms {
		version := "-"
		if r.Create != nil && r.Create.Version != "" {
			version = r.Create.Version
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.Section, r.RoomID, orDash(r.Alias), version, r.CreatedAt.Format("2006-01-02 15:04"))
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// registryRebuild rebuilds the registry from the homeserver, saying how
// far it is on stderr while it reads.
func registryRebuild(ctx context.Context, e *env, cf *cfgFlags, prune bool) error {
	cfg, err := cf.full(e)
	if err != nil {
		return err
	}
	// The registry buckets may not exist yet on a fresh NATS.
	nc, js, err := cf.connectEnsured(ctx, cfg)
	if err != nil {
		return err
	}
	defer nc.Close()
	reg, err := registry.Open(ctx, js)
	if err != nil {
		return err
	}
	res, err := rebuild.Run(ctx, cfg, reg, prune, progressLogger(e.stderr))
	if err != nil {
		return err
	}
	w := e.stdout
	fmt.Fprintf(w, "bot is in %s\n", count(res.JoinedRooms, "room"))
	fmt.Fprintf(w, "sites written: %d %s\n", len(res.Sites), list(res.Sites))
	fmt.Fprintf(w, "comment rooms written: %d\n", res.CommentRooms)
	if len(res.Orphans) > 0 {
		fmt.Fprintf(w, "orphan comment rooms (no moderation room): %d %s\n", len(res.Orphans), list(res.Orphans))
	}
	if len(res.Pruned) > 0 {
		fmt.Fprintf(w, "pruned sites the homeserver no longer has: %s\n", list(res.Pruned))
	}
	if len(res.Stale) > 0 {
		fmt.Fprintf(w, "kept sites not found on the homeserver: %s (use -prune to delete them)\n", list(res.Stale))
	}
	if len(res.Skipped) > 0 {
		fmt.Fprintf(w, "rooms that could not be read: %d\n", len(res.Skipped))
		for _, s := range res.Skipped {
			fmt.Fprintf(w, "  %s\n", s)
		}
		if prune {
			fmt.Fprintln(w, "nothing was pruned because some rooms could not be read")
		}
		return errSilent
	}
	return nil
}

func list(items []string) string {
	if len(items) == 0 {
		return ""
	}
	const maxShown = 20
	if len(items) > maxShown {
		return "(" + strings.Join(items[:maxShown], ", ") + fmt.Sprintf(", … %d more)", len(items)-maxShown)
	}
	return "(" + strings.Join(items, ", ") + ")"
}
