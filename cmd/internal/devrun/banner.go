package devrun

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/cactus-comments/appservice/pkg/config"
)

// DefaultDataDir is the data directory the printed commands assume.
const DefaultDataDir = ".cactus-dev"

// banner prints where everything runs and how to try it. Every command it
// prints works as printed from the repository root.
func banner(w io.Writer, cfg *config.Config, info Info) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	dataFlag := ""
	if filepath.Clean(info.DataDir) != DefaultDataDir {
		dataFlag = " --data " + shellQuote(info.DataDir)
	}
	p("")
	p("Cactus Comments is running (data in %s, NATS %s).", info.DataDir, info.NATSURL)
	if info.Simulator != nil {
		p("  homeserver  %s (simulator of %s, room version %s, server name %s; bot %s)", info.HomeserverURL,
			info.Simulator.Mode(), info.Simulator.RoomVersion(), cfg.ServerName(), cfg.UserID)
	} else {
		p("  homeserver  %s (bot %s)", info.HomeserverURL, cfg.UserID)
	}
	p("  gateway     %s (the homeserver's side)", info.GatewayURL)
	p("  admin       gateway %s  provisioner %s  botworker %s  (/livez /readyz /metrics)",
		info.Admin["gateway"], info.Admin["provisioner"], info.Admin["botworker"])
	env := filepath.Join(info.DataDir, EnvFile)
	if d := info.Demo; d != nil {
		p("  users       %s (password %s, token %s)", d.Owner.UserID, d.Owner.Password, d.Owner.AccessToken)
		p("              %s (password %s, token %s)", d.Visitor.UserID, d.Visitor.Password, d.Visitor.AccessToken)
		if len(info.StaleSites) > 0 {
			p("  note        the simulator starts empty: dropped %d site(s) of the last run from the registry (%s)", len(info.StaleSites), strings.Join(info.StaleSites, ", "))
		}
		p("")
		p("Try it from another terminal in this directory:")
		p("  go run ./cmd/cactusctl demo%s register myblog             # %s asks the bot to register site myblog", dataFlag, d.Owner.UserID)
		p("  go run ./cmd/cactusctl demo%s comment myblog hello First! # %s opens #%smyblog_hello:%s and comments", dataFlag, d.Visitor.UserID, d.Prefix, d.ServerName)
		p("  go run ./cmd/cactusctl demo%s ban myblog %s # %s bans them; the ban reaches every comment room", dataFlag, d.Visitor.UserID, d.Owner.UserID)
		p("  go run ./cmd/cactusctl sites list --env %s", shellQuote(env))
		p("  go run ./cmd/cactusctl doctor --env %s", shellQuote(env))
		p("Or talk to the simulator yourself, e.g.:")
		p("  curl -s -H 'Authorization: Bearer %s' %s/_matrix/client/v3/account/whoami", d.Owner.AccessToken, info.HomeserverURL)
		p("The simulator keeps nothing across restarts (users, rooms); NATS data and tokens in %s do.", info.DataDir)
	} else {
		p("Check everything: go run ./cmd/cactusctl doctor --env %s --registration %s", shellQuote(env), shellQuote(info.RegistrationPath))
	}
	p("Ctrl-C stops everything.")
	p("")
}

// shellQuote quotes s for a POSIX shell when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:@=+,") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// printRegistration shows the registration a real homeserver needs, before
// the services start (they need the homeserver to accept it).
func printRegistration(w io.Writer, info Info) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	p("")
	p("Give the homeserver this registration (%s), e.g. in Synapse's app_service_config_files, and restart it:", info.RegistrationPath)
	if b, err := os.ReadFile(info.RegistrationPath); err == nil {
		for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
			p("  | %s", l)
		}
	}
	p("The homeserver must reach the gateway at %s (if it runs in a container, set CACTUS_DEV_GATEWAY_URL, e.g. http://host.docker.internal:8080).", info.GatewayURL)
	p("")
}
