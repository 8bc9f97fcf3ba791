package hssim

import (
	"crypto/subtle"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"
)

type user struct {
	id          string
	password    string
	guest       bool
	appservice  string // id of the appservice that registered it
	displayName string
	avatarURL   string
	// registered is false for an appservice sender that has a profile but
	// was never registered (Synapse does not create it; Dendrite does).
	registered bool
}

func (s *Server) isRegisteredLocked(uid string) bool {
	u, ok := s.users[uid]
	return ok && u.registered
}

type session struct {
	userID   string
	deviceID string
	guest    bool
}

// validLocalpart is the grammar for new user ids: [a-z0-9._=\-/+].
func validLocalpart(lp string) bool {
	if lp == "" {
		return false
	}
	for i := 0; i < len(lp); i++ {
		c := lp[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.IndexByte("._=-/+", c) >= 0) {
			return false
		}
	}
	return true
}

// exclusiveOwnerLocked returns the appservice that claims userID exclusively
// (other than allowed), or nil.
func (s *Server) exclusiveUserOwnerLocked(userID string, allowed *appservice) *appservice {
	for _, as := range s.apps {
		if as == allowed {
			continue
		}
		if _, excl := as.match.User(userID); excl {
			return as
		}
	}
	return nil
}

// newSessionLocked issues an access token for a user.
func (s *Server) newSessionLocked(userID, deviceID string, guest bool) (token, device string) {
	if deviceID == "" {
		deviceID = strings.ToUpper(randomLetters(10))
	}
	token = newToken()
	s.sessions[token] = &session{userID: userID, deviceID: deviceID, guest: guest}
	return token, deviceID
}

type registerBody struct {
	Type         string `json:"type"`
	Username     string `json:"username"`
	Password     string `json:"password"`
	DeviceID     string `json:"device_id"`
	InhibitLogin bool   `json:"inhibit_login"`
	Auth         *struct {
		Type    string `json:"type"`
		Session string `json:"session"`
	} `json:"auth"`
}

const asRegistrationType = "m.login.application_service"

func (s *Server) handleRegister(q *request) (any, *matrixError) {
	var b registerBody
	if e := q.decode(&b, false); e != nil {
		return nil, e
	}
	if q.r.URL.Query().Get("kind") == "guest" {
		return s.registerGuest(b)
	}
	if b.Type == asRegistrationType {
		if q.who == nil {
			return nil, errf(http.StatusBadRequest, "M_MISSING_TOKEN", "Appservice token must be provided when using a type of m.login.application_service")
		}
		if q.who.as == nil {
			return nil, errf(http.StatusUnauthorized, "M_UNKNOWN_TOKEN", "Invalid access token passed.")
		}
		return s.registerAppserviceUser(q.who.as, b)
	}
	if q.who != nil && q.who.as != nil {
		return nil, errf(http.StatusBadRequest, "M_INVALID_PARAM", "Appservices must register with type m.login.application_service")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if b.Username != "" {
		if e := s.checkUsernameLocked(b.Username, nil); e != nil {
			return nil, e
		}
	}
	// User-interactive auth: the open-registration flow is a single dummy
	// stage, as on a Synapse without captcha or e-mail.
	if b.Auth == nil || b.Auth.Type != "m.login.dummy" {
		e := errf(http.StatusUnauthorized, "M_FORBIDDEN", "Authentication required")
		e.Extra = map[string]any{"session": randomString(24), "flows": []any{map[string]any{"stages": []string{"m.login.dummy"}}}, "params": map[string]any{}}
		if b.Auth != nil {
			e.Status, e.ErrCode, e.Message = http.StatusBadRequest, "M_UNRECOGNIZED", "Unrecognised auth type"
		}
		return nil, e
	}
	lp := b.Username
	for n := len(s.users) + 1000; lp == ""; n++ {
		if !s.isRegisteredLocked("@" + strconv.Itoa(n) + ":" + s.opts.ServerName) {
			lp = strconv.Itoa(n)
		}
	}
	uid := "@" + lp + ":" + s.opts.ServerName
	s.users[uid] = &user{id: uid, password: b.Password, registered: true}
	return s.registeredLocked(uid, b, false), nil
}

func (s *Server) registeredLocked(uid string, b registerBody, guest bool) map[string]any {
	resp := map[string]any{"user_id": uid, "home_server": s.opts.ServerName}
	if !b.InhibitLogin {
		tok, dev := s.newSessionLocked(uid, b.DeviceID, guest)
		resp["access_token"], resp["device_id"] = tok, dev
	}
	return resp
}

// checkUsernameLocked is Synapse's check_username: grammar, exclusive
// namespaces of appservices other than allowed, then in use.
func (s *Server) checkUsernameLocked(lp string, allowed *appservice) *matrixError {
	if !validLocalpart(lp) {
		return errf(http.StatusBadRequest, "M_INVALID_USERNAME", "User ID can only contain characters a-z, 0-9, or '=_-./+'")
	}
	if strings.HasPrefix(lp, "_") {
		return errf(http.StatusBadRequest, "M_INVALID_USERNAME", "User ID may not begin with '_'")
	}
	uid := "@" + lp + ":" + s.opts.ServerName
	if len(uid) > 255 {
		return errf(http.StatusBadRequest, "M_INVALID_USERNAME", "User ID may not be longer than 255 characters")
	}
	if s.exclusiveUserOwnerLocked(uid, allowed) != nil {
		return errf(http.StatusBadRequest, "M_EXCLUSIVE", "This user ID is reserved by an application service.")
	}
	if s.isRegisteredLocked(uid) {
		return errf(http.StatusBadRequest, "M_USER_IN_USE", "User ID already taken.")
	}
	return nil
}

func (s *Server) registerAppserviceUser(as *appservice, b registerBody) (any, *matrixError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if b.Username == "" {
		return nil, errf(http.StatusBadRequest, "M_MISSING_PARAM", "Missing username")
	}
	uid := "@" + b.Username + ":" + s.opts.ServerName
	if in, _ := as.match.User(uid); !in && uid != as.sender {
		return nil, errf(http.StatusBadRequest, "M_EXCLUSIVE", "Invalid user localpart for this application service.")
	}
	if e := s.checkUsernameLocked(b.Username, as); e != nil {
		return nil, e
	}
	if u, ok := s.users[uid]; ok {
		u.registered = true
	} else {
		s.users[uid] = &user{id: uid, appservice: as.reg.ID, registered: true}
	}
	return s.registeredLocked(uid, b, false), nil
}

func (s *Server) registerGuest(b registerBody) (any, *matrixError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.guestSeq++
	uid := "@" + strconv.Itoa(s.guestSeq) + ":" + s.opts.ServerName
	for s.users[uid] != nil {
		s.guestSeq++
		uid = "@" + strconv.Itoa(s.guestSeq) + ":" + s.opts.ServerName
	}
	s.users[uid] = &user{id: uid, guest: true, registered: true}
	b.InhibitLogin = false
	return s.registeredLocked(uid, b, true), nil
}

// RegisterUser registers a password user directly (no user-interactive
// auth) and returns its id and an access token. It refuses the same names
// the HTTP endpoint refuses.
func (s *Server) RegisterUser(localpart, password string) (userID, accessToken string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.checkUsernameLocked(localpart, nil); e != nil {
		return "", "", e
	}
	uid := "@" + localpart + ":" + s.opts.ServerName
	s.users[uid] = &user{id: uid, password: password, registered: true}
	tok, _ := s.newSessionLocked(uid, "", false)
	return uid, tok, nil
}

// RegisterGuest registers a guest and returns its id and access token.
func (s *Server) RegisterGuest() (userID, accessToken string) {
	resp, _ := s.registerGuest(registerBody{})
	m := resp.(map[string]any)
	return m["user_id"].(string), m["access_token"].(string)
}

// LoginToken issues a new access token for an existing user.
func (s *Server) LoginToken(userID string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.users[userID]
	if !ok || !u.registered {
		return "", false
	}
	tok, _ := s.newSessionLocked(userID, "", u.guest)
	return tok, true
}

func (s *Server) handleLoginFlows(*request) (any, *matrixError) {
	return map[string]any{"flows": []any{map[string]string{"type": "m.login.password"}, map[string]string{"type": asRegistrationType}}}, nil
}

type loginBody struct {
	Type       string `json:"type"`
	User       string `json:"user"`
	Password   string `json:"password"`
	DeviceID   string `json:"device_id"`
	Identifier *struct {
		Type string `json:"type"`
		User string `json:"user"`
	} `json:"identifier"`
}

func (s *Server) handleLogin(q *request) (any, *matrixError) {
	var b loginBody
	if e := q.decode(&b, false); e != nil {
		return nil, e
	}
	name := b.User
	if b.Identifier != nil {
		if b.Identifier.Type != "" && b.Identifier.Type != "m.id.user" {
			return nil, errf(http.StatusBadRequest, "M_UNKNOWN", "Unknown login identifier type")
		}
		name = b.Identifier.User
	}
	if name == "" {
		return nil, errf(http.StatusBadRequest, "M_INVALID_PARAM", "User identifier is missing 'user' key")
	}
	uid := name
	if !strings.HasPrefix(uid, "@") {
		uid = "@" + strings.ToLower(name) + ":" + s.opts.ServerName
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch b.Type {
	case "m.login.password":
		u, ok := s.users[uid]
		if !ok || u.password == "" || subtle.ConstantTimeCompare([]byte(u.password), []byte(b.Password)) != 1 {
			return nil, errForbidden("Invalid username or password")
		}
	case asRegistrationType:
		if q.who == nil || q.who.as == nil {
			return nil, errf(http.StatusUnauthorized, "M_MISSING_TOKEN", "Missing access token")
		}
		if in, _ := q.who.as.match.User(uid); !in && uid != q.who.as.sender {
			return nil, errForbidden("Invalid user for this application service.")
		}
		if !s.isRegisteredLocked(uid) && uid != q.who.as.sender {
			return nil, errForbidden("Invalid username or password")
		}
	default:
		return nil, errf(http.StatusBadRequest, "M_UNKNOWN", "Unknown login type %s", b.Type)
	}
	tok, dev := s.newSessionLocked(uid, b.DeviceID, false)
	return map[string]any{"user_id": uid, "access_token": tok, "device_id": dev, "home_server": s.opts.ServerName}, nil
}

func (s *Server) handleWhoami(q *request) (any, *matrixError) {
	resp := map[string]any{"user_id": q.who.userID, "is_guest": q.who.guest}
	if q.who.deviceID != "" {
		resp["device_id"] = q.who.deviceID
	}
	return resp, nil
}

func (s *Server) profileLocked(uid string) (map[string]any, *matrixError) {
	u, ok := s.users[uid]
	if !ok {
		return nil, errNotFound("Profile was not found")
	}
	p := map[string]any{}
	if u.displayName != "" {
		p["displayname"] = u.displayName
	}
	if u.avatarURL != "" {
		p["avatar_url"] = u.avatarURL
	}
	return p, nil
}

func (s *Server) handleProfileGet(q *request) (any, *matrixError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.profileLocked(q.param("userId"))
}

func (s *Server) handleProfileGetField(q *request) (any, *matrixError) {
	field := q.param("field")
	s.mu.Lock()
	defer s.mu.Unlock()
	p, e := s.profileLocked(q.param("userId"))
	if e != nil {
		return nil, e
	}
	v, ok := p[field]
	if !ok {
		return nil, errNotFound("The requested profile key does not exist.")
	}
	return map[string]any{field: v}, nil
}

func (s *Server) handleProfilePut(q *request) (any, *matrixError) {
	field := q.param("field")
	if field != "displayname" && field != "avatar_url" {
		return nil, errf(http.StatusBadRequest, "M_UNRECOGNIZED", "Unknown profile field")
	}
	var body map[string]any
	if e := q.decode(&body, false); e != nil {
		return nil, e
	}
	val, ok := body[field].(string)
	if !ok {
		return nil, errf(http.StatusBadRequest, "M_MISSING_PARAM", "Missing key '%s'", field)
	}
	target := q.param("userId")
	if target != q.who.userID {
		e := errForbidden("Cannot set another user's %s", field)
		if s.opts.Mode == Synapse {
			e.Status = http.StatusBadRequest // Synapse's AuthError(400, ...)
		}
		return nil, e
	}
	if e := s.checkProfileValue(field, val); e != nil {
		return nil, e
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	u, ok := s.users[target]
	if !ok {
		if q.who.as == nil {
			return nil, errNotFound("Profile was not found")
		}
		// The appservice sender may set a profile before registering.
		u = &user{id: target, appservice: q.who.as.reg.ID}
		s.users[target] = u
	}
	if field == "displayname" {
		u.displayName = val
	} else {
		u.avatarURL = val
	}
	// Like Synapse, tell every joined room with a fresh member event.
	for _, rid := range s.roomOrder {
		rm := s.rooms[rid]
		if rm.membership(target) != "join" {
			continue
		}
		content := rm.memberContent(target)
		content["displayname"], content["avatar_url"] = u.displayName, u.avatarURL
		if u.displayName == "" {
			delete(content, "displayname")
		}
		if u.avatarURL == "" {
			delete(content, "avatar_url")
		}
		key := target
		s.appendEventLocked(rm, target, "m.room.member", &key, mustJSON(content))
	}
	return map[string]any{}, nil
}

// Synapse's profile handler refuses a display name over 256 characters and
// an avatar URL over 1000 (400 M_UNKNOWN); the others take any string that
// fits in a member event.
const (
	maxDisplayNameLen = 256
	maxAvatarURLLen   = 1000
)

func (s *Server) checkProfileValue(field, val string) *matrixError {
	if s.opts.Mode != Synapse {
		return nil
	}
	n := utf8.RuneCountInString(val)
	switch {
	case field == "displayname" && n > maxDisplayNameLen:
		return errf(http.StatusBadRequest, "M_UNKNOWN", "Displayname is too long (max %d)", maxDisplayNameLen)
	case field == "avatar_url" && n > maxAvatarURLLen:
		return errf(http.StatusBadRequest, "M_UNKNOWN", "Avatar URL is too long (max %d)", maxAvatarURLLen)
	}
	return nil
}
