package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/go-json-experiment/json/jsontext"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/cmd/internal/appreg"
	"github.com/cactus-comments/appservice/cmd/internal/envconf"
	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/embednats"
	"github.com/cactus-comments/appservice/pkg/hssim"
	"github.com/cactus-comments/appservice/pkg/power"
	"github.com/cactus-comments/appservice/pkg/registration"
	"github.com/cactus-comments/appservice/pkg/registry"
)

// natsEnv starts an embedded NATS with the topology ensured and returns
// the variables that point cactusctl at it, and a JetStream handle.
func natsEnv(t *testing.T) (map[string]string, jetstream.JetStream) {
	t.Helper()
	srv, _, js := embednats.JetStreamTest(t)
	ctx := context.Background()
	if err := (bus.Topology{Replicas: 1}).Ensure(ctx, js); err != nil {
		t.Fatal(err)
	}
	return map[string]string{"CACTUS_NATS_URL": srv.ClientURL()}, js
}

// botConsumer is a partition consumer of the bot's events, whose dead
// letters the fixtures are.
var botConsumer = (bus.Topology{}).BotGroup().Consumer(3)

func deadLetterFixture(t *testing.T, js jetstream.JetStream, room, eventID string) {
	t.Helper()
	h := nats.Header{}
	h.Set(bus.HeaderMsgID, eventID)
	h.Set(bus.HeaderEventType, "m.room.message")
	h.Set(bus.HeaderTxnID, "txn1")
	err := bus.PublishDeadLetter(context.Background(), js, bus.DeadLetter{
		Source: botConsumer, Stream: bus.StreamEvents, Sequence: 42, Subject: bus.EventSubject(bus.ClassBot, room),
		Reason: "homeserver said 403 M_FORBIDDEN", Delivered: 3,
		Data: []byte(fmt.Sprintf(`{"event_id":%q,"room_id":%q}`, eventID, room)), Header: h,
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestDLQListReplayDrop(t *testing.T) {
	vars, js := natsEnv(t)
	ctx := context.Background()

	if r := ctl(t, vars, "dlq", "list"); r.code != exitOK || !strings.Contains(r.stdout, "no dead letters") {
		t.Fatalf("empty list: %d %s %s", r.code, r.stdout, r.stderr)
	}
	deadLetterFixture(t, js, "!a:x", "$e1")
	deadLetterFixture(t, js, "!b:x", "$e2")
	deadLetterFixture(t, js, "!c:x", "$e3")

	r := ctl(t, vars, "dlq", "list")
	if r.code != exitOK {
		t.Fatalf("list: %d %s", r.code, r.stderr)
	}
	for _, want := range []string{"SEQ", "botworker", bus.EventSubject(bus.ClassBot, "!a:x"), "403 M_FORBIDDEN"} {
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("list lacks %q:\n%s", want, r.stdout)
		}
	}
	// The group's name selects every partition's dead letters.
	for filter, n := range map[string]int{"botworker": 3, botConsumer: 3, "botworker-p0": 0, "provisioner-jobs": 0} {
		r := ctl(t, vars, "dlq", "list", "--json", "--consumer", filter)
		var got []deadLetter
		if err := json.Unmarshal([]byte(r.stdout), &got); err != nil && n > 0 {
			t.Fatalf("--consumer %s: %v\n%s", filter, err, r.stdout)
		}
		if len(got) != n {
			t.Errorf("--consumer %s: %d dead letters, want %d", filter, len(got), n)
		}
	}
	r = ctl(t, vars, "dlq", "list", "-json")
	var listed []deadLetter
	if err := json.Unmarshal([]byte(r.stdout), &listed); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	if len(listed) != 3 || listed[0].Seq != 1 || listed[0].Delivered != 3 || listed[0].Consumer != botConsumer ||
		listed[0].Subject != bus.EventSubject(bus.ClassBot, "!a:x") || !strings.Contains(string(listed[0].Data), "$e1") || listed[0].Time.IsZero() {
		t.Fatalf("unexpected JSON list %+v", listed)
	}

	// The original event is in the events stream already: the replay must
	// not be dropped as a duplicate of it.
	orig := nats.NewMsg(bus.EventSubject(bus.ClassBot, "!a:x"))
	orig.Header.Set(bus.HeaderMsgID, "$e1")
	if _, err := js.PublishMsg(ctx, orig); err != nil {
		t.Fatal(err)
	}
	events, err := js.Stream(ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	before := streamMsgs(t, events)

	if r = ctl(t, vars, "dlq", "replay", "1"); r.code != exitOK || !strings.Contains(r.stdout, "replayed 1 to") {
		t.Fatalf("replay: %d %s %s", r.code, r.stdout, r.stderr)
	}
	if got := streamMsgs(t, events); got != before+1 {
		t.Fatalf("events stream has %d messages after replay, want %d", got, before+1)
	}
	last, err := events.GetLastMsgForSubject(ctx, (bus.Topology{}).StoredSubject(bus.ClassBot, "!a:x"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(last.Data), "$e1") || last.Header.Get(bus.HeaderEventType) != "m.room.message" || last.Header.Get(bus.HeaderTxnID) != "txn1" {
		t.Fatalf("replayed message lost data or headers: %q %v", last.Data, last.Header)
	}
	for _, h := range []string{bus.HeaderReason, bus.HeaderSource, bus.HeaderStream, bus.HeaderSequence, bus.HeaderConsumer, bus.HeaderDelivered, bus.HeaderFailedAt} {
		if last.Header.Get(h) != "" {
			t.Fatalf("replayed message still carries %s", h)
		}
	}
	// It says it is a replay, and of which message, so the worker re-runs
	// it in full and orders it by the original.
	if o, ok := bus.ReplayOrigin(last.Header); !ok || o != (bus.Origin{Stream: bus.StreamEvents, Sequence: 42, Consumer: botConsumer}) {
		t.Fatalf("replay origin %+v, %v", o, ok)
	}
	// Replaying the same sequence again: it is gone, exit 1.
	if r = ctl(t, vars, "dlq", "replay", "1"); r.code != exitFailed || !strings.Contains(r.stderr, "not found") {
		t.Fatalf("second replay: %d %s %s", r.code, r.stdout, r.stderr)
	}
	if r = ctl(t, vars, "dlq", "drop", "2"); r.code != exitOK {
		t.Fatalf("drop: %d %s", r.code, r.stderr)
	}
	if r = ctl(t, vars, "dlq", "replay", "-all"); r.code != exitOK || !strings.Contains(r.stdout, "replayed 3 to") || !strings.Contains(r.stdout, "1 replayed, 0 failed") {
		t.Fatalf("replay -all: %d %s %s", r.code, r.stdout, r.stderr)
	}
	if r = ctl(t, vars, "dlq", "list"); !strings.Contains(r.stdout, "no dead letters") {
		t.Fatalf("dead letters left: %s", r.stdout)
	}
}

func TestDLQReplayKeepsDeadLetterWhenPublishFails(t *testing.T) {
	vars, js := natsEnv(t)
	// A subject no stream stores: the publish gets no ack.
	err := bus.PublishDeadLetter(context.Background(), js, bus.DeadLetter{Source: bus.ConsumerJobs, Subject: "cactus.nowhere.x", Reason: "r", Data: []byte("{}")})
	if err != nil {
		t.Fatal(err)
	}
	r := ctl(t, vars, "dlq", "replay", "-all", "-timeout", "2s")
	if r.code != exitFailed || !strings.Contains(r.stderr, "the dead letter is kept") {
		t.Fatalf("replay: %d %s %s", r.code, r.stdout, r.stderr)
	}
	if r = ctl(t, vars, "dlq", "list", "-json"); !strings.Contains(r.stdout, "cactus.nowhere.x") {
		t.Fatalf("dead letter lost: %s", r.stdout)
	}
}

// A gateway dead letter (a malformed event) has no consumer to go back
// to: its replay goes through the gateway's checks, which still refuse it,
// and keeps it, instead of sending it where nobody reads and deleting it.
func TestDLQReplayRefusesGatewayDeadLetters(t *testing.T) {
	vars, js := natsEnv(t)
	vars["CACTUS_USER_ID"] = "@cactusbot:example.org"
	err := bus.PublishDeadLetter(context.Background(), js, bus.DeadLetter{
		Source: "gateway", Subject: bus.EventSubject(bus.ClassOther, "!r:x"), Reason: "no event_id", Data: []byte(`{"type":"m.room.message"}`),
	})
	if err != nil {
		t.Fatal(err)
	}
	r := ctl(t, vars, "dlq", "replay", "1")
	if r.code != exitFailed || !strings.Contains(r.stderr, "still refused") || !strings.Contains(r.stderr, "event_id") {
		t.Fatalf("replay: %d %s %s", r.code, r.stdout, r.stderr)
	}
	if r = ctl(t, vars, "dlq", "list", "-json"); !strings.Contains(r.stdout, "no event_id") {
		t.Fatalf("gateway dead letter deleted: %s", r.stdout)
	}
}

func streamMsgs(t *testing.T, s jetstream.Stream) uint64 {
	t.Helper()
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func TestSitesList(t *testing.T) {
	vars, js := natsEnv(t)
	ctx := context.Background()
	if r := ctl(t, vars, "sites", "list"); r.code != exitOK || !strings.Contains(r.stdout, "no sites") {
		t.Fatalf("%d %s %s", r.code, r.stdout, r.stderr)
	}
	reg, err := registry.Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"blog.example.org", "shop"} {
		if err := reg.CreateSite(ctx, &registry.Site{Name: s, Owner: "@o:x", ModerationRoom: "!m" + s + ":x", Bans: []string{"@b:x"}, CreatedAt: time.Date(2026, 1, 2, 3, 4, 0, 0, time.UTC)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := reg.PutRoom(ctx, registry.Room{Site: "shop", Section: "a", RoomID: "!ra:x"}); err != nil {
		t.Fatal(err)
	}
	if err := reg.PutRoom(ctx, registry.Room{Site: "shop", Section: "b/c", RoomID: "!rb:x"}); err != nil {
		t.Fatal(err)
	}
	r := ctl(t, vars, "sites", "list")
	if r.code != exitOK {
		t.Fatalf("%d %s", r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[1], "blog.example.org") || !strings.Contains(lines[2], "!mshop:x") || !strings.Contains(lines[2], "2026-01-02 03:04") {
		t.Fatalf("table:\n%s", r.stdout)
	}
	r = ctl(t, vars, "sites", "list", "-json")
	var rows []struct {
		Name         string   `json:"name"`
		Bans         []string `json:"bans"`
		CommentRooms int      `json:"comment_rooms"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &rows); err != nil {
		t.Fatalf("%v\n%s", err, r.stdout)
	}
	if len(rows) != 2 || rows[1].Name != "shop" || rows[1].CommentRooms != 2 || rows[0].CommentRooms != 0 || len(rows[0].Bans) != 1 {
		t.Fatalf("json rows %+v", rows)
	}
}

func TestSiteRooms(t *testing.T) {
	vars, js := natsEnv(t)
	ctx := context.Background()
	reg, err := registry.Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.CreateSite(ctx, &registry.Site{Name: "shop", Owner: "@o:x", ModerationRoom: "!mshop:x"}); err != nil {
		t.Fatal(err)
	}
	if r := ctl(t, vars, "sites", "rooms", "shop"); r.code != exitOK || !strings.Contains(r.stdout, "no comment rooms") {
		t.Fatalf("%d %s %s", r.code, r.stdout, r.stderr)
	}
	for _, room := range []registry.Room{
		{Site: "shop", Section: "b/c", RoomID: "!rb:x", Alias: "#comments_shop_b/c:x"},
		{Site: "shop", Section: "a", RoomID: "!ra:x", Create: &power.Room{Version: "12"}},
	} {
		if err := reg.PutRoom(ctx, room); err != nil {
			t.Fatal(err)
		}
	}
	r := ctl(t, vars, "sites", "rooms", "shop")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != exitOK || len(lines) != 3 || !strings.HasPrefix(lines[1], "a ") || !strings.Contains(lines[1], "12") || !strings.Contains(lines[2], "#comments_shop_b/c:x") {
		t.Fatalf("%d table:\n%s%s", r.code, r.stdout, r.stderr)
	}
	r = ctl(t, vars, "sites", "rooms", "shop", "-json")
	var rooms []registry.Room
	if err := json.Unmarshal([]byte(r.stdout), &rooms); err != nil || len(rooms) != 2 || rooms[1].RoomID != "!rb:x" {
		t.Fatalf("json %v: %+v\n%s", err, rooms, r.stdout)
	}
	if r := ctl(t, vars, "sites", "rooms", "nosuch"); r.code != exitFailed || !strings.Contains(r.stderr, `no site "nosuch"`) {
		t.Fatalf("unknown site: %d %s %s", r.code, r.stdout, r.stderr)
	}
	if r := ctl(t, vars, "sites", "rooms"); r.code != exitUsage {
		t.Fatalf("no site: %d %s", r.code, r.stderr)
	}
}

func TestNATSUnreachable(t *testing.T) {
	r := ctl(t, map[string]string{"CACTUS_NATS_URL": "nats://127.0.0.1:1"}, "sites", "list", "-timeout", "300ms")
	if r.code != exitFailed || !strings.Contains(r.stderr, "cannot reach NATS at nats://127.0.0.1:1") {
		t.Fatalf("%d %s %s", r.code, r.stdout, r.stderr)
	}
}

// TestDoctorDendrite: a homeserver without the ping endpoint skips that
// check instead of failing it; consumer lag over -max-lag fails.
func TestDoctorDendrite(t *testing.T) {
	vars, js := natsEnv(t)
	g, err := appreg.Generate(appreg.Params{ServerName: "localhost", GatewayURL: "http://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	sim, err := hssim.Start(context.Background(), hssim.Options{Mode: hssim.Dendrite, Registrations: []*registration.Registration{g.Registration}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sim.Close() })
	m, err := envconf.ParseFile(g.EnvFile())
	if err != nil {
		t.Fatal(err)
	}
	maps.Copy(vars, m)
	vars["CACTUS_HOMESERVER_URL"] = sim.URL()
	r := ctl(t, vars, "doctor")
	if r.code != exitOK || !strings.Contains(r.stdout, "skip  ping") || !strings.Contains(r.stdout, "ok    as_token") {
		t.Fatalf("exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	// No worker runs here: events published for the bot stay pending.
	for _, id := range []string{"$a", "$b", "$c"} {
		m := nats.NewMsg(bus.EventSubject(bus.ClassBot, "!lag:localhost"))
		m.Header.Set(bus.HeaderMsgID, id)
		m.Data = []byte(`{}`)
		if _, err := js.PublishMsg(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	r = ctl(t, vars, "doctor", "-max-lag", "2")
	if r.code != exitFailed || !strings.Contains(r.stdout, "FAIL  lag botworker") || !strings.Contains(r.stdout, "3 pending") {
		t.Fatalf("lag: exit %d\n%s", r.code, r.stdout)
	}
	if r = ctl(t, vars, "doctor", "-max-lag", "3"); r.code != exitOK {
		t.Fatalf("lag at the limit: exit %d\n%s", r.code, r.stdout)
	}
	if !strings.Contains(r.stdout, "skip  workers") {
		t.Fatalf("no worker reports, yet:\n%s", r.stdout)
	}

	// Worker replicas report what they see; one cannot reach the
	// homeserver (doctor itself can: they may be on another network).
	kv, err := js.KeyValue(context.Background(), bus.BucketStatus)
	if err != nil {
		t.Fatal(err)
	}
	since := time.Now().Add(-3 * time.Minute)
	for _, s := range []bus.Status{
		{Service: "provisioner", Instance: "p-1", At: time.Now(), WaitingRetry: 2},
		{Service: "provisioner", Instance: "p-2", At: time.Now(), HomeserverUnreachableSince: &since, HomeserverLastStatus: 502, WaitingRetry: 1990},
	} {
		b, _ := json.Marshal(s)
		if _, err := kv.Put(context.Background(), bus.StatusKey(s.Service, s.Instance), b); err != nil {
			t.Fatal(err)
		}
	}
	r = ctl(t, vars, "doctor", "-max-lag", "3")
	if r.code != exitOK || !strings.Contains(r.stdout, "WARN  homeserver from workers") || !strings.Contains(r.stdout, "provisioner p-2: homeserver unreachable since") ||
		!strings.Contains(r.stdout, "HTTP 502") || !strings.Contains(r.stdout, "1990 messages waiting") {
		t.Fatalf("doctor with an unreachable homeserver reported: exit %d\n%s", r.code, r.stdout)
	}
}

// TestDLQListMany lists more dead letters than one batch holds, after
// deleting some in the middle, in sequence order.
func TestDLQListMany(t *testing.T) {
	vars, js := natsEnv(t)
	const n = 1300
	futures := make([]jetstream.PubAckFuture, 0, n)
	for i := range n {
		m := nats.NewMsg(bus.DLQSubject(bus.ConsumerJobs))
		m.Header.Set(bus.HeaderSource, bus.JobSubject("ban", "site", fmt.Sprintf("!r%d:x", i)))
		m.Header.Set(bus.HeaderConsumer, bus.ConsumerJobs)
		m.Header.Set(bus.HeaderReason, "r")
		m.Data = []byte(`{}`)
		f, err := js.PublishMsgAsync(m)
		if err != nil {
			t.Fatal(err)
		}
		futures = append(futures, f)
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Fatal(err)
		}
	}
	if r := ctl(t, vars, "dlq", "drop", "5", "600", "1299"); r.code != exitOK {
		t.Fatalf("drop: %d %s", r.code, r.stderr)
	}
	r := ctl(t, vars, "dlq", "list", "-json")
	var listed []deadLetter
	if err := json.Unmarshal([]byte(r.stdout), &listed); err != nil {
		t.Fatal(err)
	}
	if len(listed) != n-3 {
		t.Fatalf("listed %d, want %d", len(listed), n-3)
	}
	for i := 1; i < len(listed); i++ {
		if listed[i].Seq <= listed[i-1].Seq || listed[i].Seq == 5 || listed[i].Seq == 600 || listed[i].Seq == 1299 {
			t.Fatalf("bad order or dropped entry listed at %d: %d after %d", i, listed[i].Seq, listed[i-1].Seq)
		}
	}
	if listed[len(listed)-1].Seq != n {
		t.Fatalf("last seq %d", listed[len(listed)-1].Seq)
	}
	if r := ctl(t, vars, "dlq", "list", "-consumer", "botworker"); !strings.Contains(r.stdout, "no dead letters") {
		t.Fatalf("consumer filter: %s", r.stdout)
	}
}

// TestDLQReplayGatewayDeadLetters: the gateway's dead letters go back
// through the gateway's own checks: stored on the subject the gateway
// routes them to if they pass now, refused with the reason (and kept) if
// not.
func TestDLQReplayGatewayDeadLetters(t *testing.T) {
	vars, js := natsEnv(t)
	ctx := context.Background()
	const room = "!r:example.org"
	good := `{"event_id":"$fixed","type":"m.room.message","room_id":"` + room + `","sender":"@a:example.org","content":{"msgtype":"m.text","body":"hi"}}`
	spoof := `{"event_id":"$spoof","type":"m.room.message","room_id":"` + room + `","sender":"@m:evil.org","Sender":"@a:example.org","content":{}}`
	for _, data := range []string{good, spoof} {
		err := bus.PublishDeadLetter(ctx, js, bus.DeadLetter{Source: "gateway", Subject: bus.EventSubject(bus.ClassOther, room),
			Reason: "refused for good by JetStream", Data: []byte(data), Header: nats.Header{bus.HeaderTxnID: {"t1"}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	if r := ctl(t, vars, "dlq", "replay", "-all"); r.code != exitFailed || !strings.Contains(r.stderr, "CACTUS_USER_ID") {
		t.Fatalf("replay without the bot's user id: %d %s %s", r.code, r.stdout, r.stderr)
	}
	vars["CACTUS_USER_ID"] = "@cactusbot:example.org"
	r := ctl(t, vars, "dlq", "replay", "-all")
	if r.code != exitFailed || !strings.Contains(r.stdout, "replayed 1 to "+bus.EventSubject(bus.ClassBot, room)) ||
		!strings.Contains(r.stderr, "dead letter 2: still refused") || !strings.Contains(r.stderr, "variant") {
		t.Fatalf("replay: %d %s %s", r.code, r.stdout, r.stderr)
	}
	events, err := js.Stream(ctx, bus.StreamEvents)
	if err != nil {
		t.Fatal(err)
	}
	m, err := events.GetLastMsgForSubject(ctx, (bus.Topology{}).StoredSubject(bus.ClassBot, room))
	if err != nil || string(m.Data) != good || m.Header.Get(bus.HeaderEventID) != "$fixed" {
		t.Fatalf("replayed event: %v %v", m, err)
	}
	if r := ctl(t, vars, "dlq", "list"); !strings.Contains(r.stdout, "gateway") || strings.Count(r.stdout, "\n") != 2 {
		t.Fatalf("the refused dead letter must stay, alone:\n%s", r.stdout)
	}
}

// topology migrate deletes the consumer earlier versions consumed the
// bot's events through, once what waited there is in the partitions, and
// has nothing to do after.
func TestTopologyMigrate(t *testing.T) {
	vars, js := natsEnv(t)
	ctx := context.Background()
	if _, err := js.CreateConsumer(ctx, bus.StreamEvents, jetstream.ConsumerConfig{
		Durable: bus.RetiredConsumerBot, FilterSubject: bus.EventFilter(bus.ClassBot), AckPolicy: jetstream.AckExplicitPolicy,
	}); err != nil {
		t.Fatal(err)
	}
	if r := ctl(t, vars, "doctor"); !strings.Contains(r.stdout, "retired consumer") {
		t.Errorf("doctor does not mention the retired consumer:\n%s", r.stdout)
	}
	if r := ctl(t, vars, "topology", "migrate"); r.code != exitOK || !strings.Contains(r.stdout, "moved 0 bot events") {
		t.Fatalf("migrate: %d %s %s", r.code, r.stdout, r.stderr)
	}
	if _, err := js.Consumer(ctx, bus.StreamEvents, bus.RetiredConsumerBot); err == nil {
		t.Fatal("the retired consumer is still there")
	}
	if r := ctl(t, vars, "topology", "migrate"); r.code != exitOK || !strings.Contains(r.stdout, "nothing to migrate") {
		t.Fatalf("second migrate: %d %s %s", r.code, r.stdout, r.stderr)
	}
}

// TestDLQListUnknownConsumer: a --consumer no installation has is a
// mistake (a typo, an old name), not "no dead letters"; the known names
// are listed.
func TestDLQListUnknownConsumer(t *testing.T) {
	vars, _ := natsEnv(t)
	r := ctl(t, vars, "dlq", "list", "--consumer", "nonexist")
	if r.code != exitUsage || !strings.Contains(r.stderr, `unknown consumer "nonexist"`) ||
		!strings.Contains(r.stderr, bus.ConsumerJobs) || !strings.Contains(r.stderr, "botworker") || strings.Contains(r.stdout, "no dead letters") {
		t.Errorf("exit %d, stdout %q, stderr %q; want a usage error listing the consumers", r.code, r.stdout, r.stderr)
	}
	if r := ctl(t, vars, "dlq", "list", "--consumer", bus.ConsumerJobs); r.code != exitOK || !strings.Contains(r.stdout, "no dead letters") {
		t.Errorf("known consumer: exit %d, %q %q", r.code, r.stdout, r.stderr)
	}
}

func TestCountsSayOneInTheSingular(t *testing.T) {
	vars, _ := natsEnv(t)
	r := ctl(t, vars, "topology", "ensure")
	if r.code != exitOK || !strings.Contains(r.stdout, "(1 replica)") {
		t.Errorf("exit %d, stdout %q; want (1 replica)", r.code, r.stdout)
	}
	for _, tt := range []struct {
		n    int
		want string
	}{{0, "0 rooms"}, {1, "1 room"}, {2, "2 rooms"}} {
		if got := count(tt.n, "room"); got != tt.want {
			t.Errorf("count(%d, room) = %q, want %q", tt.n, got, tt.want)
		}
	}
}

// TestDLQListJSONAlwaysValid: whatever bytes a dead letter holds, `dlq
// list --json` prints JSON a strict decoder reads; a payload that is not
// valid UTF-8 JSON goes out as text when it is valid UTF-8, base64-encoded
// otherwise, losslessly.
func TestDLQListJSONAlwaysValid(t *testing.T) {
	vars, js := natsEnv(t)
	payloads := []struct {
		data  string
		field string // where the list puts it
	}{
		{`{"body":"` + "\xff" + `"}`, "data_base64"},
		// Text, but not JSON a strict reader takes: shown as the text.
		{`{"body":"\ud800"}`, "data_text"},
		{`{"body":"\udfff\ud800"}`, "data_text"},
		{"\xff\xfe not JSON", "data_base64"},
		{"plain text", "data_text"},
		{`{"a":1,"a":2}`, "data"},
		// Deeper than common JSON readers go (jq stops at 256).
		{`{"content":` + strings.Repeat("[", 300) + strings.Repeat("]", 300) + `}`, "data_text"},
		{`{"content":` + strings.Repeat("[", 60) + strings.Repeat("]", 60) + `}`, "data"},
		{`{"body":"h\u00e9 \ud83d\ude00"}`, "data"},
	}
	for i, p := range payloads {
		err := bus.PublishDeadLetter(context.Background(), js, bus.DeadLetter{
			Source: "gateway", Subject: bus.EventSubject(bus.ClassOther, "!r:x"), Reason: fmt.Sprint("case ", i), Data: []byte(p.data),
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	r := ctl(t, vars, "dlq", "list", "--json")
	if r.code != exitOK {
		t.Fatalf("list: %d %s", r.code, r.stderr)
	}
	// Strict: valid UTF-8, no lone surrogate escapes.
	if err := jsontext.NewDecoder(strings.NewReader(r.stdout), jsontext.AllowDuplicateNames(true)).SkipValue(); err != nil {
		t.Fatalf("output is not valid JSON: %v\n%s", err, r.stdout)
	}
	var listed []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &listed); err != nil {
		t.Fatal(err)
	}
	if len(listed) != len(payloads) {
		t.Fatalf("%d dead letters listed, want %d", len(listed), len(payloads))
	}
	for i, p := range payloads {
		got := listed[i]
		for _, f := range []string{"data", "data_text", "data_base64"} {
			if _, ok := got[f]; ok != (f == p.field) {
				t.Errorf("case %d: field %s present %v, want only %s", i, f, ok, p.field)
			}
		}
		switch p.field {
		case "data_base64":
			b, err := base64.StdEncoding.DecodeString(got["data_base64"].(string))
			if err != nil || string(b) != p.data {
				t.Errorf("case %d: data_base64 decodes to %q (%v), want %q", i, b, err, p.data)
			}
		case "data_text":
			if got["data_text"] != p.data {
				t.Errorf("case %d: data_text %q, want %q", i, got["data_text"], p.data)
			}
		}
	}
}
