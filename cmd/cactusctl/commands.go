package main

import (
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/cactus-comments/appservice/cmd/internal/appreg"
	"github.com/cactus-comments/appservice/pkg/buildinfo"
	"github.com/cactus-comments/appservice/pkg/config"
)

// This file is the command line: commands, flags and arguments. Each
// command's work is a function of its own file that takes the parsed
// values, so that changing what a command does and changing how it is
// called touch different code.

func newRoot(e *env) *cobra.Command {
	root := &cobra.Command{
		Use:   "cactusctl",
		Short: "Operate a Cactus Comments installation",
		Long: "cactusctl writes the appservice registration, checks a deployment end to end, lists sites,\n" +
			"rebuilds the registry from the homeserver, replays dead letters and writes the NATS\n" +
			"configuration.\n\n" +
			"Commands that talk to NATS or the homeserver read the CACTUS_* variables from the\n" +
			"environment and from the file given with --env (the environment wins).\n" +
			"Exit codes: 0 ok, 1 check or operation failed, 2 usage or configuration error.",
		Version:       buildinfo.Get().String(),
		SilenceErrors: true,
		SilenceUsage:  true,
		Args:          cobra.ArbitraryArgs,
		RunE: func(c *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usagef("unknown command %q (cactusctl --help lists them)", args[0])
			}
			return usagef("want a command (cactusctl --help lists them)")
		},
	}
	root.SetOut(e.stdout)
	root.SetErr(e.stderr)
	root.SetVersionTemplate("cactusctl {{.Version}}\n")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(
		registrationCmd(e), doctorCmd(e), sitesCmd(e), registryCmd(e), dlqCmd(e),
		topologyCmd(e), natsConfigCmd(e), natsCredentialsCmd(e), demoCmd(e), configCmd(e),
	)
	return root
}

// group is a command that only holds subcommands: without one, or with an
// unknown one, it is a usage error.
func group(use, short string, subs ...*cobra.Command) *cobra.Command {
	c := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ArbitraryArgs,
		RunE: func(c *cobra.Command, args []string) error {
			var names []string
			for _, s := range c.Commands() {
				if s.IsAvailableCommand() {
					names = append(names, s.Name())
				}
			}
			if len(args) == 0 {
				return usagef("want one of: %s", strings.Join(names, ", "))
			}
			return usagef("unknown subcommand %q (want one of: %s)", args[0], strings.Join(names, ", "))
		},
	}
	c.AddCommand(subs...)
	return c
}

// noArgs refuses positional arguments as a usage error.
func noArgs(_ *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usagef("unexpected arguments %q", args)
	}
	return nil
}

// cfgFlags are the flags of every command that reads the configuration.
type cfgFlags struct {
	envFile string
	timeout time.Duration
	// warned is set once the misspelt-name warnings are printed.
	warned bool
}

func (c *cfgFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&c.envFile, "env", "", "read CACTUS_* variables from this .env file too (the environment wins)")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Second, "give up waiting for NATS or the homeserver after this long")
}

func registrationCmd(e *env) *cobra.Command {
	var p appreg.Params
	var out, envOut, secretsOut string
	var force bool
	c := &cobra.Command{
		Use:   "registration --server-name NAME [flags]",
		Short: "write an appservice registration (fresh tokens) and the matching .env file",
		Long: "Writes an appservice registration file with fresh 64-hex tokens and namespaces escaped\n" +
			"for the server name, and the .env file our services need to match it. Existing files\n" +
			"are never overwritten without --force, so tokens in use are not lost by accident.",
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if !c.Flags().Changed("env-out") && out != "-" {
				envOut = filepath.Join(filepath.Dir(out), envOut)
			}
			return writeRegistration(e, p, out, envOut, secretsOut, force)
		},
	}
	f := c.Flags()
	f.StringVar(&p.ServerName, "server-name", "", "the homeserver's server name, as in user ids (required)")
	f.StringVar(&p.GatewayURL, "gateway-url", "http://localhost:8080", "URL at which the homeserver reaches the gateway")
	f.StringVar(&p.HomeserverURL, "homeserver-url", "", "URL at which our services reach the homeserver (default https://<server-name>)")
	f.StringVar(&p.ID, "id", appreg.DefaultID, "registration id")
	f.StringVar(&p.BotLocalpart, "bot-localpart", appreg.DefaultBotLocalpart, "localpart of the bot user (sender_localpart)")
	f.StringVar(&p.Prefix, "prefix", appreg.DefaultPrefix, "alias namespace prefix")
	f.StringVarP(&out, "output", "o", "-", "registration file to write; - for stdout")
	f.StringVar(&envOut, "env-out", "cactus.env", "environment file to write (by default next to --output); empty to skip")
	f.StringVar(&secretsOut, "secrets-out", "", "also write the two tokens alone to this file (for a Kubernetes Secret)")
	f.BoolVar(&force, "force", false, "overwrite existing files")
	return c
}

func doctorCmd(e *env) *cobra.Command {
	var cf cfgFlags
	var maxLag uint64
	var regFile string
	c := &cobra.Command{
		Use:   "doctor [flags]",
		Short: "check configuration, homeserver, tokens, gateway ping, NATS, topology and lag",
		Long: "Checks a deployment and prints one line per check: ok, WARN, skip or FAIL with the reason.\n" +
			"Exit 1 if any check fails, 2 if the configuration itself is invalid.",
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error { return doctor(c.Context(), e, &cf, maxLag, regFile) },
	}
	cf.register(c.Flags())
	c.Flags().Uint64Var(&maxLag, "max-lag", 10000, "fail when a consumer has more pending messages than this")
	c.Flags().StringVar(&regFile, "registration", "", "also check that this registration file matches the configuration")
	return c
}

func sitesCmd(e *env) *cobra.Command {
	var cf cfgFlags
	var asJSON bool
	list := &cobra.Command{
		Use:   "list [flags]",
		Short: "list the registered sites from the registry in NATS",
		Args:  noArgs,
		RunE:  func(c *cobra.Command, _ []string) error { return sitesList(c.Context(), e, &cf, asJSON) },
	}
	cf.register(list.Flags())
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON instead of a table")
	var roomsCF cfgFlags
	var roomsJSON bool
	rooms := &cobra.Command{
		Use:   "rooms SITE [flags]",
		Short: "list a site's comment rooms from the registry in NATS",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usagef("want one site name (cactusctl sites list shows them)")
			}
			return nil
		},
		RunE: func(c *cobra.Command, args []string) error {
			return siteRooms(c.Context(), e, &roomsCF, args[0], roomsJSON)
		},
	}
	roomsCF.register(rooms.Flags())
	rooms.Flags().BoolVar(&roomsJSON, "json", false, "print JSON instead of a table")
	return group("sites", "list registered sites and their comment rooms", list, rooms)
}

func registryCmd(e *env) *cobra.Command {
	var cf cfgFlags
	var prune bool
	rebuild := &cobra.Command{
		Use:   "rebuild [flags]",
		Short: "rebuild the site and room registry from the homeserver",
		Long: "Rebuilds the site and room registry from the homeserver: the rooms the bot is in, their\n" +
			"canonical aliases, each moderation room's power levels and bans. Safe while services run.",
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error { return registryRebuild(c.Context(), e, &cf, prune) },
	}
	cf.register(rebuild.Flags())
	rebuild.Flags().BoolVar(&prune, "prune", false, "also delete sites the homeserver no longer has (only if every room could be read)")
	return group("registry", "rebuild the site and room registry from the homeserver", rebuild)
}

// seqArgs parses dead letter sequence numbers.
func seqArgs(args []string) ([]uint64, error) {
	seqs := make([]uint64, 0, len(args))
	for _, a := range args {
		n, err := strconv.ParseUint(a, 10, 64)
		if err != nil || n == 0 {
			return nil, usagef("%q is not a dead letter sequence number (see cactusctl dlq list)", a)
		}
		seqs = append(seqs, n)
	}
	return seqs, nil
}

func dlqCmd(e *env) *cobra.Command {
	var listCF cfgFlags
	var listJSON bool
	var listConsumer string
	list := &cobra.Command{
		Use:   "list [flags]",
		Short: "list dead letters: messages a worker gave up on, with the reason",
		Args:  noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			return dlqList(c.Context(), e, &listCF, listJSON, listConsumer)
		},
	}
	listCF.register(list.Flags())
	list.Flags().BoolVar(&listJSON, "json", false, "print JSON (with the payload) instead of a table")
	list.Flags().StringVar(&listConsumer, "consumer", "", "only dead letters from this consumer (e.g. provisioner-jobs; botworker: all its partitions)")

	var replayCF cfgFlags
	var all bool
	var replayConsumer string
	replay := &cobra.Command{
		Use:   "replay (--all [--consumer NAME] | SEQ...)",
		Short: "send dead letters back through the path that would have handled them",
		Long: "Sends dead letters back through the path that would have handled them (a worker's: the subject\n" +
			"they failed on, as a forced full re-run; the gateway's: through its checks again, stored if they\n" +
			"pass now), and deletes each one only after that is acknowledged.",
		RunE: func(c *cobra.Command, args []string) error {
			if all == (len(args) > 0) {
				return usagef("give either --all or sequence numbers (see cactusctl dlq list)")
			}
			if replayConsumer != "" && !all {
				return usagef("--consumer needs --all")
			}
			if _, err := seqArgs(args); err != nil {
				return err
			}
			return dlqReplay(c.Context(), e, &replayCF, all, replayConsumer, args)
		},
	}
	replayCF.register(replay.Flags())
	replay.Flags().BoolVar(&all, "all", false, "replay every dead letter")
	replay.Flags().StringVar(&replayConsumer, "consumer", "", "with --all: only dead letters from this consumer")

	var dropCF cfgFlags
	drop := &cobra.Command{
		Use:   "drop SEQ...",
		Short: "delete dead letters for good, without replaying them",
		RunE: func(c *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usagef("give the sequence numbers to drop (see cactusctl dlq list)")
			}
			seqs, err := seqArgs(args)
			if err != nil {
				return err
			}
			return dlqDrop(c.Context(), e, &dropCF, seqs)
		},
	}
	dropCF.register(drop.Flags())
	return group("dlq", "list, replay or drop dead letters", list, replay, drop)
}

func topologyCmd(e *env) *cobra.Command {
	var cf cfgFlags
	ensure := &cobra.Command{
		Use:   "ensure [flags]",
		Short: "create or update every stream, consumer and bucket (with the operator's NATS identity)",
		Long: "Creates or updates every stream, durable consumer and key-value bucket the services use.\n" +
			"Services with their own least-privilege NATS identity (CACTUS_NATS_TOPOLOGY=check) cannot do\n" +
			"it themselves: run this at installation and after every upgrade, as the operator.",
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error { return topologyEnsure(c.Context(), e, &cf) },
	}
	cf.register(ensure.Flags())
	var mcf cfgFlags
	migrate := &cobra.Command{
		Use:   "migrate [flags]",
		Short: "move what an earlier version left behind onto this topology (after ensure)",
		Long: "Moves the bot's events still waiting in the single consumer botworker of versions before\n" +
			"the partitions to their partitions, in order, deletes that consumer and the old per-room order\n" +
			"records. Run it after topology ensure, with no botworker of the earlier version running;\n" +
			"running it again does nothing.",
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error { return topologyMigrate(c.Context(), e, &mcf) },
	}
	mcf.register(migrate.Flags())
	return group("topology", "create or update the NATS streams, consumers and buckets", ensure, migrate)
}

func natsConfigCmd(e *env) *cobra.Command {
	var format string
	c := &cobra.Command{
		Use:   "nats-config [--format server|helm]",
		Short: "print the NATS account and per-service users with their permissions",
		Long: "Prints the NATS server configuration that gives each service its own user with only the\n" +
			"subjects and JetStream API it needs, derived from the topology: --format server for a\n" +
			"nats-server configuration file (Compose, systemd), --format helm for values of the NATS\n" +
			"Helm chart. Passwords are references to the NATS server's environment, never written here.",
		Args: noArgs,
		RunE: func(*cobra.Command, []string) error { return natsConfig(e, format) },
	}
	c.Flags().StringVar(&format, "format", "server", "server or helm")
	return c
}

func natsCredentialsCmd(e *env) *cobra.Command {
	var dir string
	var force bool
	c := &cobra.Command{
		Use:   "nats-credentials --dir DIR [--force]",
		Short: "write fresh passwords for the NATS users: nats.env for the server, <identity>.env for each client",
		Args:  noArgs,
		RunE: func(*cobra.Command, []string) error {
			if dir == "" {
				return usagef("--dir is required")
			}
			return natsCredentials(e, dir, force)
		},
	}
	c.Flags().StringVar(&dir, "dir", "", "directory to write the files into (created 0700)")
	c.Flags().BoolVar(&force, "force", false, "replace existing passwords")
	return c
}

func demoCmd(e *env) *cobra.Command {
	var dir string
	var wait time.Duration
	c := &cobra.Command{
		Use:   "demo [--data DIR] register SITE | comment SITE SECTION [TEXT...] | ban SITE USER [REASON...]",
		Short: "drive the dev runner's demo (make run)",
		Long: "Drives the dev runner's simulator as its demo users would, through the client-server API:\n" +
			"  register SITE                 the owner (@demo) asks the bot to register SITE and joins its moderation room\n" +
			"  comment SITE SECTION [TEXT]   the visitor (@visitor) opens the comment section (the appservice creates\n" +
			"                                the room on demand) and posts TEXT\n" +
			"  ban SITE USER [REASON]        the owner bans USER in the moderation room and waits until the ban has\n" +
			"                                reached every comment room of SITE the demo opened",
		RunE: func(c *cobra.Command, args []string) error { return demoStep(c.Context(), e, dir, wait, args) },
	}
	c.Flags().StringVar(&dir, "data", "", "the dev runner's data directory (default .cactus-dev, or CACTUS_DEV_DATA)")
	c.Flags().DurationVar(&wait, "wait", 30*time.Second, "how long to wait for the services at each step")
	return c
}

func configCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "config",
		Short: "list every CACTUS_* variable with its default",
		Args:  noArgs,
		RunE:  func(*cobra.Command, []string) error { return config.Usage(e.stdout) },
	}
}
