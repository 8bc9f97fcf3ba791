package provisioner

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestVersionCache(t *testing.T) {
	now := time.Unix(1000, 0)
	calls, answer := 0, "10"
	var fail error
	c := &versionCache{ttl: time.Minute, now: func() time.Time { return now }, fetch: func(context.Context) (string, error) {
		calls++
		return answer, fail
	}}
	get := func(want string, wantCalls int) {
		t.Helper()
		got, err := c.get(context.Background())
		if err != nil || got != want || calls != wantCalls {
			t.Fatalf("get = %q, %v after %d fetches; want %q after %d", got, err, calls, want, wantCalls)
		}
	}
	get("10", 1)
	answer = "12" // the operator changed the default
	get("10", 1)
	now = now.Add(time.Minute)
	get("12", 2)
	c.forget()
	answer = "11"
	get("11", 3)
	c.forget()
	fail = errors.New("homeserver down")
	if _, err := c.get(context.Background()); err == nil {
		t.Fatal("a failed fetch answered a version")
	}
	fail = nil
	get("11", 5)
}
