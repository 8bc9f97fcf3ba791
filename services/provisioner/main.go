// Command provisioner creates comment rooms on alias queries, keeps the site
// and room registry, and propagates moderation across each site's rooms.
package main

import (
	"os"

	"github.com/cactus-comments/appservice/pkg/service"
	"github.com/cactus-comments/appservice/services/provisioner/provisioner"
)

func main() {
	os.Exit(service.Main("provisioner", os.Args[1:], os.Stderr, provisioner.Run))
}
