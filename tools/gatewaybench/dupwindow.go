package main

import "context"

type dupResult struct{}

func dupTable(d []dupResult) string { return "" }

func dupWindow(ctx context.Context, b *binaries, o options) ([]dupResult, error) { return nil, nil }
