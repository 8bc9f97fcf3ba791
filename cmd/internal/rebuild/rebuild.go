// Package rebuild runs a registry rebuild from the homeserver for the
// operator CLI and the dev runner, with an optional prune of the sites the
// homeserver no longer has.
package rebuild

import (
	"context"
	"fmt"
	"log/slog"
	"slices"

	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/matrix"
	"github.com/cactus-comments/appservice/pkg/registry"
)

// Result is what the rebuild found and what the prune removed.
type Result struct {
	registry.RebuildReport
	// Pruned are sites that were in the registry but not on the
	// homeserver, and were deleted.
	Pruned []string
	// Stale are such sites that were kept: prune was off, or the rebuild
	// skipped rooms it could not read (one of them might be the site's).
	Stale []string
}

// Run rebuilds reg from the homeserver the configuration names. With prune,
// sites the homeserver does not have are deleted afterwards, but only if
// every room could be read.
func Run(ctx context.Context, cfg *config.Config, reg *registry.Registry, prune bool, log *slog.Logger) (Result, error) {
	var res Result
	hs, err := matrix.NewClient(matrix.Config{HomeserverURL: cfg.HomeserverURL, Token: cfg.ASToken.Reveal(), RequestTimeout: cfg.HomeserverTimeout, Logger: log})
	if err != nil {
		return res, err
	}
	before, err := reg.Sites(ctx)
	if err != nil {
		return res, err
	}
	res.RebuildReport, err = registry.Rebuild(ctx, reg, hs, cfg.Namespace(), cfg.Bot(), log)
	if err != nil {
		return res, err
	}
	for _, s := range before {
		if _, found := slices.BinarySearch(res.Sites, s.Name); !found {
			res.Stale = append(res.Stale, s.Name)
		}
	}
	if !prune || len(res.Skipped) > 0 {
		return res, nil
	}
	for _, name := range res.Stale {
		if err := reg.DeleteSite(ctx, name); err != nil {
			return res, fmt.Errorf("prune site %q: %w", name, err)
		}
		res.Pruned = append(res.Pruned, name)
	}
	res.Stale = nil
	return res, nil
}
