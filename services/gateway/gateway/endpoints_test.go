package gateway

import (
	"net/http"
	"testing"
)

// TestEndpoints walks the endpoint table of the spec with every prefix and
// every way of sending (or botching) the homeserver's token.
func TestEndpoints(t *testing.T) {
	e := newEnv(t)
	type row struct {
		name   string
		method string
		path   string // after the prefix
		body   []byte
		status int
		code   string // errcode for errors
		body2x string // exact body for 2xx
	}
	api := []row{
		{"transaction", http.MethodPut, "/transactions/1", txnBody(message("$endpoints1", "!r:example.org")), 200, "", "{}"},
		{"empty transaction", http.MethodPut, "/transactions/2", txnBody(), 200, "", "{}"},
		{"user query, the bot", http.MethodGet, "/users/%40cactusbot%3Aexample.org", nil, 200, "", "{}"},
		{"user query, the bot, Dendrite escaping", http.MethodGet, "/users/@cactusbot:example.org", nil, 200, "", "{}"},
		{"user query, someone else", http.MethodGet, "/users/%40alice%3Aexample.org", nil, 404, "M_NOT_FOUND", ""},
		{"alias query, not ours", http.MethodGet, "/rooms/%23general%3Aexample.org", nil, 404, "M_NOT_FOUND", ""},
		{"ping", http.MethodPost, "/ping", []byte(`{"transaction_id":"t1"}`), 200, "", "{}"},
	}
	thirdParty := []row{
		{"third-party locations", http.MethodGet, "/thirdparty/location?alias=%23x%3Ay", nil, 200, "", "[]"},
		{"third-party users", http.MethodGet, "/thirdparty/user?userid=%40x%3Ay", nil, 200, "", "[]"},
		{"third-party protocol", http.MethodGet, "/thirdparty/protocol/irc", nil, 404, "M_UNRECOGNIZED", ""},
		{"third-party location lookup", http.MethodGet, "/thirdparty/location/irc", nil, 404, "M_UNRECOGNIZED", ""},
		{"third-party user lookup", http.MethodGet, "/thirdparty/user/irc", nil, 404, "M_UNRECOGNIZED", ""},
	}
	type prefixed struct {
		row
		prefix string
	}
	var rows []prefixed
	for _, p := range apiPrefixes {
		for _, r := range api {
			rows = append(rows, prefixed{r, p})
		}
	}
	for _, p := range thirdPartyPrefixes {
		for _, r := range thirdParty {
			rows = append(rows, prefixed{r, p})
		}
	}
	for _, r := range rows {
		for _, a := range []authForm{authHeader, authQuery, authBoth, authNone, authWrongHeader, authWrongQuery, authHeaderOKQueryWrong, authHeaderWrongQueryOK} {
			t.Run(r.name+" "+r.prefix+" "+a.String(), func(t *testing.T) {
				status, body := e.doAuth(r.method, r.prefix+r.path, r.body, a)
				wantStatus, wantCode := r.status, r.code
				switch a {
				case authNone:
					wantStatus, wantCode = 401, "M_MISSING_TOKEN"
				case authWrongHeader, authWrongQuery, authHeaderOKQueryWrong, authHeaderWrongQueryOK:
					wantStatus, wantCode = 403, "M_FORBIDDEN"
				}
				if status != wantStatus {
					t.Fatalf("status %d, want %d (body %s)", status, wantStatus, body)
				}
				if wantStatus < 300 {
					if string(body) != r.body2x {
						t.Fatalf("body %s, want %s", body, r.body2x)
					}
					return
				}
				if code := errcode(t, body); code != wantCode {
					t.Fatalf("errcode %s, want %s", code, wantCode)
				}
			})
		}
	}
}

// TestAuthEscapedQueryKey: an escaped access_token key is still the
// token, so a wrong one is refused even beside a right header.
func TestAuthEscapedQueryKey(t *testing.T) {
	e := newEnv(t)
	for _, tt := range []struct {
		query  string
		status int
	}{
		{"access%5Ftoken=" + wrongToken, 403},
		{"access%5Ftoken=" + testHSToken, 200},
		{"access_token=" + testHSToken + "&access_token=" + wrongToken, 403},
	} {
		status, body := doRequest(t, e.srv.Client(), http.MethodPost, e.srv.URL+"/_matrix/app/v1/ping?"+tt.query, nil, authHeader)
		if status != tt.status {
			t.Errorf("%s: status %d, want %d (%s)", tt.query, status, tt.status, body)
		}
	}
}

func TestUnrecognized(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		method, path string
		status       int
	}{
		{http.MethodGet, "/", 404},
		{http.MethodGet, "/_matrix/app/v1/nothing", 404},
		{http.MethodGet, "/_matrix/app/v2/transactions/1", 404},
		{http.MethodPut, "/_matrix/app/v1/transactions/", 404},
		{http.MethodGet, "/_matrix/app/v1/transactions/1", 405},
		{http.MethodPost, "/_matrix/app/v1/transactions/1", 405},
		{http.MethodPut, "/_matrix/app/v1/users/%40a%3Ab", 405},
		{http.MethodGet, "/_matrix/app/v1/ping", 405},
		{http.MethodDelete, "/rooms/%23a%3Ab", 405},
		{http.MethodPost, "/_matrix/app/v1/thirdparty/location", 405},
	}
	for _, tt := range tests {
		for _, a := range []authForm{authHeader, authNone} {
			t.Run(tt.method+" "+tt.path+" "+a.String(), func(t *testing.T) {
				status, body := e.doAuth(tt.method, tt.path, nil, a)
				if status != tt.status {
					t.Fatalf("status %d, want %d (%s)", status, tt.status, body)
				}
				if code := errcode(t, body); code != "M_UNRECOGNIZED" {
					t.Fatalf("errcode %s", code)
				}
			})
		}
	}
}

func TestPing(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		body   string
		status int
		code   string
	}{
		{`{"transaction_id":"mautrix-go_1"}`, 200, ""},
		{`{}`, 200, ""},
		{`null`, 200, ""},
		{``, 200, ""},
		{` {"transaction_id":null,"other":1} `, 200, ""},
		{`{"transaction_id":1}`, 400, "M_BAD_JSON"},
		{`[]`, 400, "M_BAD_JSON"},
		{`"x"`, 400, "M_BAD_JSON"},
		{`{`, 400, "M_NOT_JSON"},
		{`nul`, 400, "M_NOT_JSON"},
	}
	for _, tt := range tests {
		t.Run(tt.body, func(t *testing.T) {
			status, body := e.do(http.MethodPost, "/_matrix/app/v1/ping", []byte(tt.body))
			if status != tt.status {
				t.Fatalf("status %d, want %d (%s)", status, tt.status, body)
			}
			if tt.status == 200 {
				if string(body) != "{}" {
					t.Fatalf("body %s", body)
				}
				return
			}
			if code := errcode(t, body); code != tt.code {
				t.Fatalf("errcode %s, want %s", code, tt.code)
			}
		})
	}
}
