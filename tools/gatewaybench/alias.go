package main

import "context"

type aliasSummary struct{ OverP50, OverP99 float64 }

func (a *aliasSummary) table() string { return "" }

func aliasBench(ctx context.Context, b *binaries, o options) (*aliasSummary, error) { return nil, nil }
