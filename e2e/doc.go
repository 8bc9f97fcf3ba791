// Package e2e holds the cross-service end-to-end tests: the gateway, the
// provisioner and the botworker against an embedded NATS server and the
// homeserver simulator, all in one process. The shared harness is in
// harness_test.go.
package e2e
