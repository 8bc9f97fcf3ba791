package hssim

import (
	"encoding/json"
	"slices"
	"testing"
)

func TestEventContext(t *testing.T) {
	e := startEnv(t, Dendrite)
	id, atok := watchedRoom(t, e)
	before := sendMessages(t, e, id, atok, 3, "b")
	e.mustOK(e.do("POST", "/_matrix/client/v3/rooms/"+esc(id)+"/kick", testASToken, map[string]any{"user_id": "@alice:example.org"}))
	tl := e.hs.Timeline(id)
	kick := tl[len(tl)-1].EventID
	_, btok := e.user("bob")
	e.mustOK(e.do("POST", "/_matrix/client/v3/rooms/"+esc(id)+"/join", btok, map[string]any{}))
	after := sendMessages(t, e, id, btok, 2, "a")

	get := func(token, eventID, query string) resp {
		return e.do("GET", "/_matrix/client/v3/rooms/"+esc(id)+"/context/"+esc(eventID)+query, token, nil)
	}
	var ctx struct {
		Event struct {
			EventID  string `json:"event_id"`
			Unsigned struct {
				PrevContent map[string]any `json:"prev_content"`
			} `json:"unsigned"`
		} `json:"event"`
		Before []struct {
			EventID string `json:"event_id"`
		} `json:"events_before"`
		After []struct {
			EventID string `json:"event_id"`
		} `json:"events_after"`
		State      []json.RawMessage `json:"state"`
		Start, End string
	}
	r := e.mustOK(get(testASToken, kick, "?limit=4"))
	if err := json.Unmarshal(r.Raw, &ctx); err != nil {
		t.Fatal(err)
	}
	ids := func(evs []struct {
		EventID string `json:"event_id"`
	}) []string {
		var out []string
		for _, ev := range evs {
			out = append(out, ev.EventID)
		}
		return out
	}
	if ctx.Event.EventID != kick || ctx.Event.Unsigned.PrevContent["membership"] != "join" {
		t.Errorf("event %s", r.Raw)
	}
	if got, want := ids(ctx.Before), []string{before[2], before[1]}; !slices.Equal(got, want) {
		t.Errorf("events_before %v, want %v (newest first)", got, want)
	}
	if len(ctx.After) != 2 || ctx.After[1].EventID != after[0] || len(ctx.State) == 0 {
		t.Errorf("events_after %v, state %d events", ids(ctx.After), len(ctx.State))
	}
	// The tokens page on with /messages.
	m := e.mustOK(e.do("GET", "/_matrix/client/v3/rooms/"+esc(id)+"/messages?dir=b&limit=1&from="+ctx.Start, testASToken, nil))
	if chunk, _ := m.Body["chunk"].([]any); len(chunk) != 1 || chunk[0].(map[string]any)["event_id"] != before[0] {
		t.Errorf("paging back from start: %s", m.Raw)
	}

	wantErr(t, get(testASToken, "$nowhere", ""), 404, "M_NOT_FOUND")
	wantErr(t, get(testASToken, kick, "?limit=x"), 400, "M_INVALID_PARAM")
	_, ctok := e.user("carol")
	wantErr(t, get(ctok, kick, ""), 403, "M_FORBIDDEN")
}
