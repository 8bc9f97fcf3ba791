package deploytest

import (
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/cactus-comments/appservice/pkg/bus"
)

// natsValues mirrors the keys of deploy/k8s/nats-values.yaml, the values
// for the official NATS Helm chart (1.x layout). Decoding is strict, so a
// key moved or misspelt here fails instead of being ignored by helm.
type natsValues struct {
	FullnameOverride  string `yaml:"fullnameOverride"`
	NamespaceOverride string `yaml:"namespaceOverride"`
	Config            struct {
		NATS struct {
			TLS struct {
				Enabled    bool   `yaml:"enabled"`
				SecretName string `yaml:"secretName"`
			} `yaml:"tls"`
		} `yaml:"nats"`
		Cluster struct {
			Enabled  bool `yaml:"enabled"`
			Replicas int  `yaml:"replicas"`
		} `yaml:"cluster"`
		JetStream struct {
			Enabled   bool `yaml:"enabled"`
			FileStore struct {
				Enabled bool   `yaml:"enabled"`
				Dir     string `yaml:"dir"`
				PVC     struct {
					Enabled          bool    `yaml:"enabled"`
					Size             string  `yaml:"size"`
					StorageClassName *string `yaml:"storageClassName"`
				} `yaml:"pvc"`
			} `yaml:"fileStore"`
			MemoryStore struct {
				Enabled bool `yaml:"enabled"`
			} `yaml:"memoryStore"`
		} `yaml:"jetstream"`
		Monitor struct {
			Enabled bool `yaml:"enabled"`
			Port    int  `yaml:"port"`
		} `yaml:"monitor"`
	} `yaml:"config"`
	Container struct {
		Image struct {
			Tag string `yaml:"tag"`
		} `yaml:"image"`
		Env   map[string]string `yaml:"env"`
		Merge struct {
			Resources struct {
				Requests map[string]string `yaml:"requests"`
				Limits   map[string]string `yaml:"limits"`
			} `yaml:"resources"`
		} `yaml:"merge"`
	} `yaml:"container"`
	PodTemplate struct {
		TopologySpreadConstraints map[string]struct {
			MaxSkew           int    `yaml:"maxSkew"`
			WhenUnsatisfiable string `yaml:"whenUnsatisfiable"`
		} `yaml:"topologySpreadConstraints"`
	} `yaml:"podTemplate"`
	Service struct {
		Ports struct {
			Monitor struct {
				Enabled bool `yaml:"enabled"`
			} `yaml:"monitor"`
		} `yaml:"ports"`
	} `yaml:"service"`
	PodDisruptionBudget struct {
		Enabled bool `yaml:"enabled"`
	} `yaml:"podDisruptionBudget"`
	NatsBox struct {
		Enabled bool `yaml:"enabled"`
	} `yaml:"natsBox"`
}

func loadNATSValues(t *testing.T) natsValues {
	t.Helper()
	var v natsValues
	if err := decodeYAMLStrict(readRepoFile(t, "deploy/k8s/nats-values.yaml"), &v); err != nil {
		t.Fatalf("nats-values.yaml: %v", err)
	}
	if v.FullnameOverride == "" || v.NamespaceOverride == "" {
		t.Fatal("nats-values.yaml: set fullnameOverride and namespaceOverride, so the service names the manifests use do not depend on the helm command line")
	}
	return v
}

func (v natsValues) namespace() string { return v.NamespaceOverride }

// serviceHost is the chart's client service; headlessHost its headless
// service, through which each server is reachable by name.
func (v natsValues) serviceHost() string {
	return v.FullnameOverride + "." + v.NamespaceOverride + ".svc.cluster.local"
}

func (v natsValues) headlessHost() string {
	return v.FullnameOverride + "-headless." + v.NamespaceOverride + ".svc.cluster.local"
}

func TestNATSValues(t *testing.T) {
	v := loadNATSValues(t)
	c := v.Config
	if !c.Cluster.Enabled || c.Cluster.Replicas < 3 || c.Cluster.Replicas%2 == 0 {
		t.Errorf("cluster: enabled %v, %d replicas; want a JetStream cluster of an odd number, at least 3, of servers (RAFT quorum)", c.Cluster.Enabled, c.Cluster.Replicas)
	}
	if !c.JetStream.Enabled {
		t.Fatal("JetStream is not enabled")
	}
	// Our streams and buckets use file storage (pkg/bus) in production.
	for _, s := range (bus.Topology{}).Streams() {
		if s.Storage != jetstream.FileStorage {
			t.Fatalf("stream %s is not on file storage; revisit the storage below", s.Name)
		}
	}
	fs := c.JetStream.FileStore
	if !fs.Enabled || !fs.PVC.Enabled {
		t.Error("JetStream file store on a PersistentVolumeClaim is not enabled: a restarted pod would lose its streams")
	}
	if q := quantity(t, fs.PVC.Size); q.Cmp(quantity(t, "1Gi")) < 0 {
		t.Errorf("file store PVC %s: too small for a production stream", fs.PVC.Size)
	}
	if c.JetStream.MemoryStore.Enabled {
		t.Error("memory store enabled: nothing of ours uses it, and it takes memory from the limit")
	}
	if !c.Monitor.Enabled || c.Monitor.Port <= 0 {
		t.Error("monitoring is off: the KEDA nats-jetstream scaler reads it")
	}

	tag := v.Container.Image.Tag
	if got, want := imageMinor(tag), natsServerMinor(t); got != want {
		t.Errorf("image tag %q is %s; the tests embed nats-server %s (pkg/go.mod)", tag, got, want)
	}
	res := v.Container.Merge.Resources
	for _, r := range []string{"cpu", "memory"} {
		if res.Requests[r] == "" {
			t.Errorf("container resources: no %s request", r)
		}
	}
	limit, ok := res.Limits["memory"]
	if !ok {
		t.Fatal("container resources: no memory limit")
	}
	gml, ok := v.Container.Env["GOMEMLIMIT"]
	if !ok {
		t.Fatal("no GOMEMLIMIT: the server's heap would not respect the memory limit")
	}
	// Go writes MiB where Kubernetes writes Mi.
	if g, l := quantity(t, strings.TrimSuffix(gml, "B")), quantity(t, limit); g.Cmp(l) >= 0 {
		t.Errorf("GOMEMLIMIT %s is not below the memory limit %s", gml, limit)
	}
	if tsc, ok := v.PodTemplate.TopologySpreadConstraints["kubernetes.io/hostname"]; !ok || tsc.MaxSkew != 1 || tsc.WhenUnsatisfiable != "DoNotSchedule" {
		t.Error("servers are not spread one per node: a node failure could take the quorum")
	}
	if !v.PodDisruptionBudget.Enabled {
		t.Error("no PodDisruptionBudget: a drain could stop two servers at once")
	}
	if !c.NATS.TLS.Enabled || c.NATS.TLS.SecretName == "" {
		t.Error("clients reach NATS without TLS: tokens and events would cross the cluster network in clear")
	}
}
