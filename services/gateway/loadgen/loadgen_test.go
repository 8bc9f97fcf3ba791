package loadgen

import (
	"encoding/json"
	"testing"
)

func TestTransaction(t *testing.T) {
	body := Transaction("t", 3, 100, 1024)
	var txn struct{ Events []map[string]any }
	if err := json.Unmarshal(body, &txn); err != nil {
		t.Fatal(err)
	}
	if len(txn.Events) != 100 {
		t.Fatalf("%d events", len(txn.Events))
	}
	ids := map[string]bool{}
	for i, e := range txn.Events {
		id, _ := e["event_id"].(string)
		if id != EventID("t", 3, i) || ids[id] {
			t.Fatalf("event %d id %q", i, id)
		}
		ids[id] = true
		for _, k := range []string{"type", "room_id", "sender", "content", "origin_server_ts"} {
			if _, ok := e[k]; !ok {
				t.Fatalf("event %d lacks %s", i, k)
			}
		}
	}
	// About 1 KiB per event, as the benchmarks say.
	if per := len(body) / 100; per < 900 || per > 1200 {
		t.Fatalf("%d bytes per event", per)
	}
}
