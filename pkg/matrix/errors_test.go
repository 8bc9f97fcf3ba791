package matrix

import (
	"errors"
	"fmt"
	"testing"
)

func TestErrorClassification(t *testing.T) {
	wrap := func(e *Error) error { return fmt.Errorf("provisioning: %w", e) }
	tests := []struct {
		name                                                        string
		err                                                         error
		code                                                        string
		roomInUse, userInUse, notFound, forbidden, limit, permanent bool
		transient                                                   bool
	}{
		{"room in use", wrap(&Error{Status: 400, ErrCode: "M_ROOM_IN_USE"}), "M_ROOM_IN_USE", true, false, false, false, false, true, false},
		{"user in use", &Error{Status: 400, ErrCode: "M_USER_IN_USE"}, "M_USER_IN_USE", false, true, false, false, false, true, false},
		{"not found", wrap(&Error{Status: 404, ErrCode: "M_NOT_FOUND"}), "M_NOT_FOUND", false, false, true, false, false, true, false},
		{"bare 404", &Error{Status: 404}, "", false, false, true, false, false, true, false},
		{"unrecognized 404", &Error{Status: 404, ErrCode: "M_UNRECOGNIZED"}, "M_UNRECOGNIZED", false, false, false, false, false, true, false},
		{"forbidden", &Error{Status: 403, ErrCode: "M_FORBIDDEN"}, "M_FORBIDDEN", false, false, false, true, false, true, false},
		{"bare 403", &Error{Status: 403}, "", false, false, false, true, false, true, false},
		{"rate limited", &Error{Status: 429, ErrCode: "M_LIMIT_EXCEEDED"}, "M_LIMIT_EXCEEDED", false, false, false, false, true, false, true},
		{"limit code on 400", &Error{Status: 400, ErrCode: "M_LIMIT_EXCEEDED"}, "M_LIMIT_EXCEEDED", false, false, false, false, true, false, true},
		{"request timeout", &Error{Status: 408}, "", false, false, false, false, false, false, true},
		{"server error", &Error{Status: 500, ErrCode: "M_UNKNOWN"}, "M_UNKNOWN", false, false, false, false, false, false, true},
		{"not implemented", &Error{Status: 501}, "", false, false, false, false, false, false, false},
		{"network", &transportError{endpoint: "send", method: "PUT", err: errors.New("connection reset")}, "", false, false, false, false, false, false, true},
		{"other", errors.New("boom"), "", false, false, false, false, false, false, false},
		{"nil", nil, "", false, false, false, false, false, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := []bool{IsRoomInUse(tc.err), IsUserInUse(tc.err), IsNotFound(tc.err), IsForbidden(tc.err),
				IsLimitExceeded(tc.err), IsPermanent(tc.err), IsTransient(tc.err)}
			want := []bool{tc.roomInUse, tc.userInUse, tc.notFound, tc.forbidden, tc.limit, tc.permanent, tc.transient}
			for i := range got {
				if got[i] != want[i] {
					t.Errorf("predicates (roomInUse, userInUse, notFound, forbidden, limit, permanent, transient) = %v, want %v", got, want)
					break
				}
			}
			if ErrCode(tc.err) != tc.code {
				t.Errorf("ErrCode = %q, want %q", ErrCode(tc.err), tc.code)
			}
		})
	}
}

func TestErrorString(t *testing.T) {
	e := &Error{Status: 429, ErrCode: "M_LIMIT_EXCEEDED", Message: "Too Many Requests", RetryAfter: 1500 * 1e6, Endpoint: "send"}
	want := "matrix: send: HTTP 429 M_LIMIT_EXCEEDED: Too Many Requests (retry after 1.5s)"
	if e.Error() != want {
		t.Errorf("Error() = %q, want %q", e.Error(), want)
	}
}
