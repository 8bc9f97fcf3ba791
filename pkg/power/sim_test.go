package power

import (
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"testing"

	"github.com/cactus-comments/appservice/pkg/hssim"
	"github.com/cactus-comments/appservice/pkg/matrix"
)

// simUser is a registered user of the simulator.
type simUser struct{ id, tok string }

type simEnv struct {
	t     *testing.T
	hs    *hssim.Server
	users map[string]simUser // by user id
}

func startSim(t *testing.T, mode hssim.Mode) *simEnv {
	t.Helper()
	hs, err := hssim.Start(context.Background(), hssim.Options{ServerName: "example.org", Mode: mode})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = hs.Close() })
	e := &simEnv{t: t, hs: hs, users: map[string]simUser{}}
	for _, lp := range []string{"bot", "owner", "alice", "bob", "person"} {
		id, tok, err := hs.RegisterUser(lp, "pw-"+lp)
		if err != nil {
			t.Fatal(err)
		}
		e.users[id] = simUser{id, tok}
	}
	return e
}

func (e *simEnv) do(as, method, path string, body any) (json.RawMessage, error) {
	return e.hs.Do(e.t.Context(), e.users[as].tok, method, path, body)
}

func (e *simEnv) must(raw json.RawMessage, err error) json.RawMessage {
	e.t.Helper()
	if err != nil {
		e.t.Fatal(err)
	}
	return raw
}

func (e *simEnv) createRoom(as string, body map[string]any) string {
	e.t.Helper()
	var out struct {
		RoomID string `json:"room_id"`
	}
	if err := json.Unmarshal(e.must(e.do(as, "POST", "/_matrix/client/v3/createRoom", body)), &out); err != nil {
		e.t.Fatal(err)
	}
	return out.RoomID
}

func (e *simEnv) levels(room string) *matrix.PowerLevels {
	e.t.Helper()
	raw, ok := e.hs.StateEvent(room, "m.room.power_levels", "")
	if !ok {
		e.t.Fatalf("no power levels in %s", room)
	}
	return pl(e.t, string(raw))
}

func (e *simEnv) setLevels(as, room string, p *matrix.PowerLevels) error {
	_, err := e.do(as, "PUT", "/_matrix/client/v3/rooms/"+url.PathEscape(room)+"/state/m.room.power_levels/", p)
	return err
}

// A site's moderation room and a comment room in every pair of versions,
// on every homeserver: the decisions of this package are what the
// simulator's rules accept, and refuse what they refuse.
func TestDecisionsAgainstTheSimulator(t *testing.T) {
	versions := []string{"10", "11", "12"}
	for _, mode := range []hssim.Mode{hssim.Synapse, hssim.Dendrite, hssim.Conduit} {
		for _, modV := range versions {
			for _, comV := range versions {
				t.Run(string(mode)+"/v"+modV+"-v"+comV, func(t *testing.T) {
					e := startSim(t, mode)
					modRoom, comRoom := Room{Version: modV, Creator: bot}, Room{Version: comV, Creator: bot}
					mod := e.createRoom(bot, map[string]any{"room_version": modV, "invite": []string{owner},
						"power_level_content_override": ModerationRoomOverride(modV, bot, owner)})
					e.must(e.do(owner, "POST", "/_matrix/client/v3/join/"+url.PathEscape(mod), map[string]any{}))
					site := e.levels(mod)

					com := e.createRoom(bot, map[string]any{"room_version": comV, "preset": "public_chat",
						"power_level_content_override": CopyFor(modRoom, site, comRoom)})
					if got, want := e.hs.PowerLevel(com, owner), 100; got != want {
						t.Fatalf("owner at %d in the comment room", got)
					}
					if UserLevel(comRoom, e.levels(com), bot) != e.hs.PowerLevel(com, bot) {
						t.Fatal("UserLevel disagrees with the homeserver about the bot")
					}

					// The owner adds a moderator and a second admin; the
					// bot carries the change over.
					changed := site.Clone()
					changed.SetUserLevel(alice, 50)
					changed.SetUserLevel(bob, 100)
					if err := e.setLevels(owner, mod, changed); err != nil {
						t.Fatal(err)
					}
					target, skipped := Reconcile(comRoom, e.levels(com), CopyFor(modRoom, e.levels(mod), comRoom), bot)
					if err := e.setLevels(bot, com, target); err != nil {
						t.Fatalf("homeserver refused the reconciled levels %s (skipped %v): %v", canonical(t, target), skipped, err)
					}
					if e.hs.PowerLevel(com, alice) != 50 || e.hs.PowerLevel(com, bob) != 100 {
						t.Fatal("change not carried over")
					}
					// Demoting the second admin (as the bot would in a v12
					// moderation room) reaches the comment room only where
					// the bot is above them there (a v12 creator).
					changed.SetUserLevel(bob, 0)
					target, skipped = Reconcile(comRoom, e.levels(com), CopyFor(modRoom, changed, comRoom), bot)
					if err := e.setLevels(bot, com, target); err != nil {
						t.Fatalf("homeserver refused the reconciled levels (skipped %v): %v", skipped, err)
					}
					if want := comRoom.PrivilegedCreators(); (e.hs.PowerLevel(com, bob) == 0) != want || (len(skipped) == 0) != want {
						t.Fatalf("second admin at %d, skipped %v", e.hs.PowerLevel(com, bob), skipped)
					}

					for _, u := range []string{owner, alice, bob, person} {
						e.must(e.do(u, "POST", "/_matrix/client/v3/join/"+url.PathEscape(com), map[string]any{}))
					}
					// Each ban decision against the homeserver's answer,
					// in an order where no ban removes a later actor.
					for _, p := range [][2]string{{owner, bot}, {alice, bob}, {alice, owner}, {bot, bob}, {bot, person}, {bot, owner}} {
						decision := CanBan(comRoom, e.levels(com), p[0], p[1])
						_, err := e.do(p[0], "POST", "/_matrix/client/v3/rooms/"+url.PathEscape(com)+"/ban", map[string]any{"user_id": p[1]})
						if (decision == nil) != (err == nil) {
							t.Fatalf("%s bans %s: decision %v, homeserver %v", p[0], p[1], decision, err)
						}
						var api *hssim.APIError
						if errors.Is(decision, ErrCreator) && (!errors.As(err, &api) || api.Status != 403) {
							t.Fatalf("banning a creator: homeserver answered %v", err)
						}
					}
				})
			}
		}
	}
}

func marshal(t *testing.T, p *matrix.PowerLevels) json.RawMessage {
	b, err := json.Marshal(p)
	if err != nil {
		t.Skip() // invalid Extra JSON: the caller's to refuse
	}
	return b
}

var fuzzVersions = []string{"10", "11", "12"}

// FuzzReconcile: whatever the contents, the homeserver's rules accept the
// change Reconcile makes, as long as both inputs are contents a homeserver
// accepted; and reconciling again changes nothing.
func FuzzReconcile(f *testing.F) {
	f.Add(`{"users":{"@bot:example.org":100,"@alice:example.org":100}}`, `{"users":{"@alice:example.org":0,"@bob:example.org":50}}`, uint8(0), true, false)
	f.Add(`{"users":{"@bot:example.org":50},"ban":100}`, `{"ban":10,"users":{"@bot:example.org":100}}`, uint8(1), true, false)
	f.Add(`{}`, `{"users_default":60,"events":{"m.room.name":70}}`, uint8(0), true, false)
	f.Add(`{"users":{"@owner:example.org":100}}`, `{"users":{"@bot:example.org":100,"@owner:example.org":0,"@carol:example.org":5}}`, uint8(2), true, true)
	f.Add(`{"users":{"@bot:example.org":100},"events":{"m.room.power_levels":150}}`, `{"users":{"@alice:example.org":50}}`, uint8(2), false, true)
	f.Fuzz(func(t *testing.T, curJSON, wantJSON string, v uint8, botCreates, carolCreates bool) {
		room := Room{Version: fuzzVersions[int(v)%len(fuzzVersions)], Creator: person}
		if botCreates {
			room.Creator = bot
		}
		if carolCreates {
			room.AdditionalCreators = []string{carol}
		}
		var cur, want matrix.PowerLevels
		if json.Unmarshal([]byte(curJSON), &cur) != nil || json.Unmarshal([]byte(wantJSON), &want) != nil {
			return
		}
		curRaw, wantRaw := marshal(t, &cur), marshal(t, &want)
		if hssim.CheckPowerLevelsChange(room.Version, room.Creator, room.AdditionalCreators, room.Creator, nil, curRaw) != nil ||
			hssim.CheckPowerLevelsChange("10", bot, nil, bot, nil, wantRaw) != nil {
			return // not contents a homeserver holds
		}
		got, skipped := Reconcile(room, &cur, &want, bot)
		gotRaw := marshal(t, got)
		if !same(t, got, &cur) {
			if err := hssim.CheckPowerLevelsChange(room.Version, room.Creator, room.AdditionalCreators, bot, curRaw, gotRaw); err != nil {
				t.Fatalf("v%s: %s -> %s refused: %v (skipped %v)", room.Version, curRaw, gotRaw, err, skipped)
			}
		}
		again, skipped := Reconcile(room, got, &want, bot)
		if !same(t, again, got) {
			t.Fatalf("second reconcile changed the result (skipped %v)", skipped)
		}
	})
}

// FuzzCopyFor: a site's levels accepted in one room, copied into a room
// of any version made by the bot, are accepted there as its first power
// levels, with the bot named where Synapse requires it.
func FuzzCopyFor(f *testing.F) {
	f.Add(`{"users":{"@bot:example.org":100,"@owner:example.org":100}}`, uint8(0), uint8(2), false)
	f.Add(`{"users":{"@owner:example.org":100}}`, uint8(2), uint8(0), true)
	f.Add(`{"users":{"@carol:example.org":50,"@owner:example.org":100},"ban":70}`, uint8(0), uint8(2), true)
	f.Fuzz(func(t *testing.T, plJSON string, sv, dv uint8, carolCreates bool) {
		src := Room{Version: fuzzVersions[int(sv)%len(fuzzVersions)], Creator: bot}
		dst := Room{Version: fuzzVersions[int(dv)%len(fuzzVersions)], Creator: bot}
		if carolCreates {
			dst.AdditionalCreators = []string{carol}
		}
		var p matrix.PowerLevels
		if json.Unmarshal([]byte(plJSON), &p) != nil {
			return
		}
		if hssim.CheckPowerLevelsChange(src.Version, src.Creator, src.AdditionalCreators, src.Creator, nil, marshal(t, &p)) != nil {
			return
		}
		out := CopyFor(src, &p, dst)
		raw := marshal(t, out)
		if err := hssim.CheckPowerLevelsChange(dst.Version, dst.Creator, dst.AdditionalCreators, bot, nil, raw); err != nil {
			t.Fatalf("v%s -> v%s: %s refused: %v", src.Version, dst.Version, raw, err)
		}
		if _, listed := out.Users[bot]; !dst.PrivilegedCreators() && !listed {
			t.Fatalf("v%s -> v%s: %s lacks the creating bot", src.Version, dst.Version, raw)
		}
	})
}
