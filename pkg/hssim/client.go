package hssim

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
)

// APIError is an error answer of the simulator seen through Do and the
// helpers below.
type APIError struct {
	Status  int
	ErrCode string
	Message string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("homeserver simulator: %d %s: %s", e.Status, e.ErrCode, e.Message)
}

// Do performs a real client-server request against the simulator as the
// holder of token (empty: unauthenticated). path is appended as given, so
// escape ids in it (url.PathEscape). A non-2xx answer is an *APIError.
func (s *Server) Do(ctx context.Context, token, method, path string, body any) (json.RawMessage, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("encode body: %w", err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, s.url+path, rd)
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", method, req.URL.Path, err)
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	if err != nil {
		return nil, fmt.Errorf("read answer: %w", err)
	}
	if res.StatusCode/100 != 2 {
		var e struct {
			ErrCode string `json:"errcode"`
			Error   string `json:"error"`
		}
		_ = json.Unmarshal(raw, &e)
		return raw, &APIError{Status: res.StatusCode, ErrCode: e.ErrCode, Message: e.Error}
	}
	return raw, nil
}

func (s *Server) doField(ctx context.Context, token, method, path string, body any, field string) (string, error) {
	raw, err := s.Do(ctx, token, method, path, body)
	if err != nil {
		return "", err
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		return "", fmt.Errorf("decode answer: %w", err)
	}
	v, _ := m[field].(string)
	return v, nil
}

const clientPrefix = "/_matrix/client/v3"

// CreateRoom calls createRoom with body and returns the room id.
func (s *Server) CreateRoom(ctx context.Context, token string, body map[string]any) (string, error) {
	if body == nil {
		body = map[string]any{}
	}
	return s.doField(ctx, token, http.MethodPost, clientPrefix+"/createRoom", body, "room_id")
}

// Join joins a room by id or alias (asking appservices for unknown
// aliases) and returns the room id.
func (s *Server) Join(ctx context.Context, token, roomIDOrAlias string) (string, error) {
	return s.doField(ctx, token, http.MethodPost, clientPrefix+"/join/"+url.PathEscape(roomIDOrAlias), map[string]any{}, "room_id")
}

// Send sends a message event with a fresh transaction id.
func (s *Server) Send(ctx context.Context, token, roomID, evType string, content any) (string, error) {
	return s.doField(ctx, token, http.MethodPut, clientPrefix+"/rooms/"+url.PathEscape(roomID)+"/send/"+url.PathEscape(evType)+"/"+randomLetters(16), content, "event_id")
}

// SendText sends an m.text message.
func (s *Server) SendText(ctx context.Context, token, roomID, text string) (string, error) {
	return s.Send(ctx, token, roomID, "m.room.message", map[string]any{"msgtype": "m.text", "body": text})
}

// PutState sets a state event and returns its id.
func (s *Server) PutState(ctx context.Context, token, roomID, evType, stateKey string, content any) (string, error) {
	return s.doField(ctx, token, http.MethodPut, clientPrefix+"/rooms/"+url.PathEscape(roomID)+"/state/"+url.PathEscape(evType)+"/"+url.PathEscape(stateKey), content, "event_id")
}

// MemberAction performs "invite", "kick", "ban" or "unban" of userID.
func (s *Server) MemberAction(ctx context.Context, token, roomID, action, userID, reason string) error {
	body := map[string]any{"user_id": userID}
	if reason != "" {
		body["reason"] = reason
	}
	_, err := s.Do(ctx, token, http.MethodPost, clientPrefix+"/rooms/"+url.PathEscape(roomID)+"/"+action, body)
	return err
}

// Leave leaves a room.
func (s *Server) Leave(ctx context.Context, token, roomID string) error {
	_, err := s.Do(ctx, token, http.MethodPost, clientPrefix+"/rooms/"+url.PathEscape(roomID)+"/leave", map[string]any{})
	return err
}
