// Command gateway serves the Application Service API to the homeserver and
// stores every event it receives in JetStream. It is configured through
// CACTUS_* environment variables (gateway -h lists them).
package main

import (
	"os"

	"github.com/cactus-comments/appservice/pkg/service"
	"github.com/cactus-comments/appservice/services/gateway/gateway"
)

func main() {
	gateway.TuneGC()
	os.Exit(service.Main("gateway", os.Args[1:], os.Stderr, gateway.Run))
}
