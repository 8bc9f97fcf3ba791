// Package deploytest holds the tests that validate the container image
// definition, docker-compose.yml and the Kubernetes manifests against the
// services' real configuration, ports and probes. It has no code of its
// own: it is a module apart so that the Kubernetes and kustomize libraries
// the tests need never enter the services' dependency graphs.
package deploytest
