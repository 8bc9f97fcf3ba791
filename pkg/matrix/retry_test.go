package matrix

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"
)

func TestRetry(t *testing.T) {
	down := &Error{Status: http.StatusBadGateway}
	limited := &Error{Status: http.StatusTooManyRequests, ErrCode: CodeLimitExceeded, RetryAfter: 3 * time.Millisecond}
	forbidden := &Error{Status: http.StatusForbidden, ErrCode: CodeForbidden}

	var waits []time.Duration
	n := 0
	err := Retry(context.Background(), time.Millisecond, 2*time.Millisecond, func(context.Context) error {
		n++
		switch n {
		case 1, 2, 3:
			return down
		case 4:
			return limited
		}
		return nil
	}, func(_ error, in time.Duration) { waits = append(waits, in) })
	if err != nil || n != 5 {
		t.Fatalf("Retry = %v after %d attempts, want success on the 5th", err, n)
	}
	want := []time.Duration{time.Millisecond, 2 * time.Millisecond, 2 * time.Millisecond, 3 * time.Millisecond}
	if len(waits) != len(want) {
		t.Fatalf("waits %v, want %v", waits, want)
	}
	for i := range want {
		if waits[i] != want[i] {
			t.Fatalf("waits %v, want %v (capped backoff, then the rate limit's delay)", waits, want)
		}
	}

	n = 0
	err = Retry(context.Background(), time.Millisecond, time.Millisecond, func(context.Context) error { n++; return forbidden }, nil)
	if !errors.Is(err, forbidden) || n != 1 {
		t.Fatalf("a permanent refusal: Retry = %v after %d attempts, want it at once", err, n)
	}

	ctx, cancel := context.WithCancel(context.Background())
	err = Retry(ctx, time.Hour, time.Hour, func(context.Context) error { cancel(); return down }, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: Retry = %v", err)
	}
}
