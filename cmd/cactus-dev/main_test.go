package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/cactus-comments/appservice/cmd/internal/envconf"
	"github.com/cactus-comments/appservice/pkg/hssim"
)

func TestParseOptions(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		env   map[string]string
		check func(t *testing.T, o optionsView)
	}{
		{"defaults", nil, nil, func(t *testing.T, o optionsView) {
			if o.DataDir != ".cactus-dev" || o.NATSPort != 4222 || o.GatewayAddr != "127.0.0.1:8080" || o.SimAddr != "127.0.0.1:8008" ||
				o.AdminAddrs != [3]string{"127.0.0.1:9090", "127.0.0.1:9091", "127.0.0.1:9092"} || o.SimMode != hssim.Synapse || o.HomeserverURL != "" {
				t.Fatalf("%+v", o)
			}
		}},
		{"env", nil, map[string]string{"CACTUS_DEV_DATA": "/d", "CACTUS_DEV_NATS_PORT": "0", "CACTUS_DEV_ADMIN_PORT": "7000", "CACTUS_HOMESERVER_URL": "http://hs:8008", "CACTUS_DEV_HS_MODE": "dendrite", "CACTUS_DEV_ROOM_VERSION": "12"}, func(t *testing.T, o optionsView) {
			if o.DataDir != "/d" || o.NATSPort != 0 || o.AdminAddrs[2] != "127.0.0.1:7002" || o.HomeserverURL != "http://hs:8008" || o.SimMode != hssim.Dendrite || o.SimRoomVersion != "12" {
				t.Fatalf("%+v", o)
			}
		}},
		{"flags win over env", []string{"-data", "/f", "-admin-port", "0", "-room-version", "11"}, map[string]string{"CACTUS_DEV_DATA": "/d", "CACTUS_DEV_ROOM_VERSION": "12"}, func(t *testing.T, o optionsView) {
			if o.DataDir != "/f" || o.AdminAddrs[0] != "127.0.0.1:0" || o.AdminAddrs[1] != "127.0.0.1:0" || o.SimRoomVersion != "11" {
				t.Fatalf("%+v", o)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parseOptions(tt.args, &bytes.Buffer{}, envconf.Map(tt.env))
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, optionsView{DataDir: o.DataDir, NATSPort: o.NATSPort, GatewayAddr: o.GatewayAddr, SimAddr: o.SimAddr, AdminAddrs: o.AdminAddrs, SimMode: o.SimMode, SimRoomVersion: o.SimRoomVersion, HomeserverURL: o.HomeserverURL})
		})
	}
}

type optionsView struct {
	DataDir, GatewayAddr, SimAddr, HomeserverURL, SimRoomVersion string
	NATSPort                                                     int
	AdminAddrs                                                   [3]string
	SimMode                                                      hssim.Mode
}

func TestRunUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		env  map[string]string
		code int
		want string
	}{
		{[]string{"-h"}, nil, 0, "usage: cactus-dev"},
		{[]string{"extra"}, nil, 2, "unexpected arguments"},
		{[]string{"-nats-port", "x"}, nil, 2, "not a port number"},
		{nil, map[string]string{"CACTUS_DEV_NATS_PORT": "70000"}, 2, "not a port number"},
		{[]string{"-hs-mode", "matrix.org"}, nil, 2, "unknown homeserver mode"},
		{nil, map[string]string{"CACTUS_DEV_ROOM_VERSION": "9"}, 2, "want 10, 11 or 12"},
		{[]string{"-room-version", "v12"}, nil, 2, "CACTUS_DEV_ROOM_VERSION"},
		{[]string{"-bogus"}, nil, 2, "flag provided but not defined"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(tt.args, &out, &errb, envconf.Map(tt.env), nil)
			if code != tt.code || !strings.Contains(errb.String(), tt.want) {
				t.Fatalf("exit %d (want %d): %s", code, tt.code, errb.String())
			}
		})
	}
}

func TestVersion(t *testing.T) {
	var out, errb bytes.Buffer
	if code := run([]string{"-version"}, &out, &errb, envconf.Map(nil), nil); code != 0 || !strings.HasPrefix(out.String(), "cactus-dev ") || !strings.Contains(out.String(), "revision") {
		t.Fatalf("run(-version) = %d, printed %q %q", code, out.String(), errb.String())
	}
}

// TestWarnsAboutMisspeltDevVariables: a misspelt CACTUS_DEV_* name would
// leave its default in force without a word; the dev runner says so, with
// the name it probably meant, as the services do for theirs.
func TestWarnsAboutMisspeltDevVariables(t *testing.T) {
	environ := []string{"CACTUS_DEV_NATS_PROT=4223", "CACTUS_DEV_HS_MODE=dendrite", "CACTUS_LOGLEVEL=debug", "CACTUS_HOMESERVER_URL=http://x"}
	got := warnings(environ)
	want := []string{
		"CACTUS_DEV_NATS_PROT is not a variable the dev runner reads; did you mean CACTUS_DEV_NATS_PORT?",
		"CACTUS_LOGLEVEL is not a variable the services read; did you mean CACTUS_LOG_LEVEL?",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// A usage error comes first, but the warning is given with it.
	var out, errb bytes.Buffer
	code := run([]string{"extra"}, &out, &errb, envconf.Map(nil), environ)
	if code != 2 || !strings.Contains(errb.String(), "did you mean CACTUS_DEV_NATS_PORT?") {
		t.Errorf("exit %d, stderr %q", code, errb.String())
	}
}
