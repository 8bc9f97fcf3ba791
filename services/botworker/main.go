// Command botworker is the chat interface of the comment service: the bot
// that site owners talk to. Configuration is through CACTUS_* environment
// variables (botworker -h lists them).
package main

import (
	"os"

	"github.com/cactus-comments/appservice/pkg/service"
	"github.com/cactus-comments/appservice/services/botworker/botworker"
)

func main() {
	os.Exit(service.Main(botworker.Name, os.Args[1:], os.Stderr, botworker.Run))
}
