// Package loadgen builds realistic transaction bodies for the gateway's
// benchmarks and load tool: events shaped like the ones Synapse pushes to an
// appservice (client format with the legacy top-level age and user_id),
// mostly comments posted in comment rooms, with a few joins.
package loadgen

import (
	"encoding/json"
	"fmt"
	"strings"
)

// Rooms is how many distinct comment rooms the events spread over.
const Rooms = 64

var words = strings.Fields(`the a comment about this post thanks for writing it I think
you are right but maybe consider another angle here great article really enjoyed reading
interesting point however the benchmark numbers look odd to me could you share more details
on how it was measured and which version of the software was used`)

// EventID is the id of event i of transaction seq in a run: unique per run,
// so a run never hits JetStream's duplicate window by accident.
func EventID(run string, seq, i int) string {
	return fmt.Sprintf("$%s-%d-%d_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789", run, seq, i)
}

// RoomID is comment room i (0 ≤ i < Rooms): a site's comment rooms are
// what the events are posted in, and a benchmark registers them as such.
func RoomID(i int) string { return fmt.Sprintf("!room%02dAbCdEfGhIjKlMn:example.org", i) }

// Event returns one event of about size bytes (at least its fixed fields).
func Event(run string, seq, i, size int) []byte {
	n := seq*7919 + i*104729
	room := RoomID(n % Rooms)
	sender := fmt.Sprintf("@visitor%d:example.org", n%997)
	ts := int64(1_700_000_000_000 + seq*1000 + i)
	ev := map[string]any{
		"event_id":         EventID(run, seq, i),
		"room_id":          room,
		"sender":           sender,
		"user_id":          sender,
		"origin_server_ts": ts,
		"age":              42,
		"unsigned":         map[string]any{"age": 42},
	}
	if i%20 == 19 {
		ev["type"] = "m.room.member"
		ev["state_key"] = sender
		ev["content"] = map[string]any{"membership": "join", "displayname": fmt.Sprintf("Visitor %d", n%997)}
		ev["unsigned"] = map[string]any{"age": 42, "replaces_state": "$previous_member_event_0123456789abcdef"}
	} else {
		ev["type"] = "m.room.message"
		ev["content"] = map[string]any{"msgtype": "m.text", "body": ""}
	}
	b, _ := json.Marshal(ev)
	if ev["type"] == "m.room.message" {
		var body strings.Builder
		for k := n; body.Len() < size-len(b)-len(`,"format":"org.matrix.custom.html","formatted_body":""`)/2; k++ {
			body.WriteString(words[k%len(words)])
			body.WriteByte(' ')
		}
		text := strings.TrimSpace(body.String())
		ev["content"] = map[string]any{"msgtype": "m.text", "body": text}
		b, _ = json.Marshal(ev)
	}
	return b
}

// Transaction returns the body of transaction seq: n events of about size
// bytes each.
func Transaction(run string, seq, n, size int) []byte {
	var b strings.Builder
	b.WriteString(`{"events":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(Event(run, seq, i, size))
	}
	b.WriteString(`],"ephemeral":[]}`)
	return []byte(b.String())
}
