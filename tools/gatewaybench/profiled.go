package main

import (
	"context"
	"fmt"
	"os"
	"runtime/pprof"

	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/service"
	"github.com/cactus-comments/appservice/services/gateway/gateway"
	"github.com/cactus-comments/appservice/services/provisioner/provisioner"
)

// serveProfiled runs a service as its binary does (configuration from
// CACTUS_* variables, the same Run) with a CPU profile written to path
// when it stops: the services have no profiling endpoint.
func serveProfiled(name, path string) int {
	var run func(context.Context, *config.Config) error
	switch name {
	case "gateway":
		gateway.TuneGC() // as services/gateway/main.go does
		run = gateway.Run
	case "provisioner":
		run = provisioner.Run
	default:
		fmt.Fprintf(os.Stderr, "gatewaybench: cannot profile %q\n", name)
		return 2
	}
	f, err := os.Create(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "gatewaybench:", err)
		return 1
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		fmt.Fprintln(os.Stderr, "gatewaybench:", err)
		return 1
	}
	code := service.Main(name, nil, os.Stderr, run)
	pprof.StopCPUProfile()
	_ = f.Close()
	return code
}
