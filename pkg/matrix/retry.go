package matrix

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Retry calls fn until it succeeds, fails permanently (IsPermanent: a
// refusal that retrying cannot fix), or ctx ends, waiting between attempts
// with exponential backoff from first up to max, or as long as a rate
// limit asked. It is for the steps a service takes once at startup against
// a homeserver that may not be up yet. onRetry, if set, hears each failure
// and the wait before the next attempt.
func Retry(ctx context.Context, first, max time.Duration, fn func(context.Context) error, onRetry func(err error, in time.Duration)) error {
	delay := first
	for {
		err := fn(ctx)
		if err == nil || IsPermanent(err) {
			return err
		}
		wait := delay
		var e *Error
		if errors.As(err, &e) && e.RetryAfter > wait {
			wait = e.RetryAfter
		}
		if onRetry != nil {
			onRetry(err, wait)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		case <-time.After(wait):
		}
		delay = min(delay*2, max)
	}
}
