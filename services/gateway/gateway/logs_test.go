package gateway

import (
	"net/http"
	"strings"
	"testing"

	"github.com/cactus-comments/appservice/pkg/config"
)

// TestTokensNeverLogged drives every path that logs, at debug level, with
// right and wrong tokens in both places, and looks for the tokens in the
// output.
func TestTokensNeverLogged(t *testing.T) {
	e := newEnv(t, withConfig(func(c *config.Config) { c.LogLevel = "debug" }))
	paths := []struct {
		method, path string
		body         []byte
	}{
		{http.MethodPut, "/_matrix/app/v1/transactions/1", txnBody(message("$l1", "!r:example.org"), `{"type":"x"}`)},
		{http.MethodPut, "/_matrix/app/v1/transactions/2", []byte(`{"events":`)},
		{http.MethodGet, "/_matrix/app/v1/users/%40x%3Aexample.org", nil},
		{http.MethodGet, "/_matrix/app/v1/rooms/%23comments_a_b%3Aexample.org", nil},
		{http.MethodPost, "/_matrix/app/v1/ping", []byte(`{"transaction_id":"` + testHSToken + `"}`)},
		{http.MethodGet, "/_matrix/app/v1/nowhere", nil},
	}
	forms := []authForm{authHeader, authQuery, authBoth, authNone, authWrongHeader, authWrongQuery, authHeaderOKQueryWrong, authHeaderWrongQueryOK}
	for _, p := range paths {
		for _, a := range forms {
			e.doAuth(p.method, p.path+"?note=1", p.body, a)
		}
	}
	logs := e.logs.String()
	for name, secret := range map[string]string{"hs_token": testHSToken, "as_token": testASToken, "wrong token": wrongToken} {
		if strings.Contains(logs, secret) {
			t.Errorf("the %s appears in the logs", name)
		}
	}
	// The test is only worth something if the query strings did reach the
	// logs, redacted.
	if !strings.Contains(logs, `access_token=[REDACTED]`) {
		t.Errorf("no redacted query in the logs; was the request logged at all?\n%s", logs)
	}
	if !strings.Contains(logs, "wrong homeserver token") {
		t.Errorf("no log line about the wrong token")
	}
}
