package deploytest

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io/fs"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"

	"github.com/cactus-comments/appservice/pkg/bus"
)

const (
	k8sReadme     = "deploy/k8s/README.md"
	secretsDir    = "deploy/k8s/overlays/production/secrets"
	productionDir = "deploy/k8s/overlays/production"
)

var (
	cactusctlOnce sync.Once
	cactusctlBin  string
	cactusctlErr  error
)

// cactusctl builds the real command once per test run.
func cactusctl(t *testing.T) string {
	t.Helper()
	cactusctlOnce.Do(func() {
		dir, err := os.MkdirTemp("", "deploytest-cactusctl-*")
		if err != nil {
			cactusctlErr = err
			return
		}
		cactusctlBin = filepath.Join(dir, "cactusctl")
		build := exec.Command("go", "build", "-o", cactusctlBin, "./cmd/cactusctl")
		build.Dir = repoRoot(t)
		if out, err := build.CombinedOutput(); err != nil {
			cactusctlErr = err
			t.Logf("%s", out)
		}
	})
	if cactusctlErr != nil {
		t.Fatalf("go build ./cmd/cactusctl: %v", cactusctlErr)
	}
	return cactusctlBin
}

// readmeCommands are the `go run ./cmd/cactusctl ...` invocations of a
// README, joined across continuation lines, as arguments after cactusctl.
func readmeCommands(t *testing.T, file string) [][]string {
	t.Helper()
	var out [][]string
	var cur string
	sc := bufio.NewScanner(bytes.NewReader(readRepoFile(t, file)))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if cur != "" {
			cur += " " + strings.TrimSuffix(line, "\\")
		} else if rest, ok := strings.CutPrefix(line, "go run ./cmd/cactusctl "); ok {
			cur = strings.TrimSuffix(rest, "\\")
		} else {
			continue
		}
		if !strings.HasSuffix(line, "\\") {
			out = append(out, strings.Fields(cur))
			cur = ""
		}
	}
	return out
}

// productionWithSecrets is a copy of deploy/k8s in which the commands of
// deploy/k8s/README.md have written the overlay's secret files, as an
// operator following it does, and a NATS CA certificate.
func productionWithSecrets(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("builds cactusctl")
	}
	work := t.TempDir()
	src := filepath.Join(repoRoot(t), "deploy", "k8s")
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		dst := filepath.Join(work, "deploy", "k8s", rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o700)
		}
		if strings.HasPrefix(filepath.ToSlash(rel), "overlays/production/secrets/") && d.Name() != ".gitignore" {
			return nil // an operator's local files never reach the test
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
	bin := cactusctl(t)
	ran := map[string]bool{}
	for _, argv := range readmeCommands(t, k8sReadme) {
		if argv[0] != "registration" && argv[0] != "nats-credentials" {
			continue
		}
		ran[argv[0]] = true
		run := exec.Command(bin, argv...)
		run.Dir = work
		run.Env = []string{"PATH=" + os.Getenv("PATH")}
		if out, err := run.CombinedOutput(); err != nil {
			t.Fatalf("cactusctl %v: %v\n%s", argv, err, out)
		}
	}
	if !ran["registration"] || !ran["nats-credentials"] {
		t.Fatalf("%s does not show both cactusctl registration and nats-credentials", k8sReadme)
	}
	writeCA(t, filepath.Join(work, filepath.FromSlash(secretsDir), "nats-ca.crt"))
	return filepath.Join(work, filepath.FromSlash(productionDir))
}

func writeCA(t *testing.T, path string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test NATS CA"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestProductionNeedsItsSecrets: the overlay as committed, without the
// files the README's commands write, does not render at all: there is no
// placeholder to fall back to.
func TestProductionNeedsItsSecrets(t *testing.T) {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	_, err := k.Run(filesys.MakeFsOnDisk(), filepath.Join(repoRoot(t), filepath.FromSlash(productionDir)))
	if err == nil {
		if _, statErr := os.Stat(filepath.Join(repoRoot(t), filepath.FromSlash(secretsDir), "cactus-tokens.env")); statErr == nil {
			t.Skip("this checkout holds an operator's secret files")
		}
		t.Fatal("the production overlay renders without its secret files")
	}
	if !strings.Contains(err.Error(), "cactus-tokens.env") {
		t.Fatalf("render error %v does not name the missing token file", err)
	}
}

// checkSecrets: base holds no Secret; production generates every Secret
// the pods use, with a content hash in its name (a new token or password
// rolls the pods), and no placeholder anywhere.
func checkSecrets(t *testing.T, r *rendered, ov overlay) {
	if !ov.production {
		if len(r.secrets) != 0 {
			t.Errorf("base holds %d Secrets; tokens and passwords come from an overlay", len(r.secrets))
		}
		return
	}
	want := []string{"cactus-tokens", "cactus-nats-gateway", "cactus-nats-provisioner", "cactus-nats-botworker", "cactus-nats-operator", "nats-ca", "nats-users"}
	var got []string
	for _, s := range r.secrets {
		base := s.Name
		if s.Namespace == "cactus" {
			i := strings.LastIndex(s.Name, "-")
			if i < 0 || len(s.Name)-i-1 != 10 {
				t.Errorf("Secret %s has no content hash suffix: changing it would not restart the pods", s.Name)
			} else {
				base = s.Name[:i]
			}
		}
		got = append(got, base)
		for k, v := range secretValues(s) {
			l := strings.ToLower(v)
			if strings.Contains(l, "replace_me") || strings.Contains(l, "changeme") || v == "" {
				t.Errorf("Secret %s key %s holds a placeholder", s.Name, k)
			}
		}
	}
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("Secrets %v, want %v", got, want)
	}
	users := map[string]string{}
	for _, s := range r.secrets {
		if strings.HasPrefix(s.Name, "cactus-nats-") {
			v := secretValues(s)
			users[v["CACTUS_NATS_USER"]] = v["CACTUS_NATS_PASSWORD"]
		}
	}
	for _, s := range r.secrets {
		if s.Name != "nats-users" {
			continue
		}
		if s.Namespace != "nats" {
			t.Errorf("Secret nats-users in namespace %q, want nats (the NATS servers read it)", s.Namespace)
		}
		v := secretValues(s)
		for _, id := range bus.Identities() {
			if users[string(id)] == "" || v["NATS_PASSWORD_"+strings.ToUpper(string(id))] != users[string(id)] {
				t.Errorf("NATS user %s: the server's and the client's passwords differ or are missing", id)
			}
		}
	}
}

// checkCactusctlJob: the CronJob Jobs are made from runs cactusctl as the
// operator with the services' configuration, never on its own schedule.
func checkCactusctlJob(t *testing.T, r *rendered, ov overlay) {
	if len(r.cronJobs) != 1 || r.cronJobs[0].Name != "cactusctl" {
		t.Fatalf("want one CronJob cactusctl, got %d", len(r.cronJobs))
	}
	cj := r.cronJobs[0]
	if cj.Spec.Suspend == nil || !*cj.Spec.Suspend {
		t.Error("CronJob cactusctl is not suspended: it would run on its schedule")
	}
	pod := cj.Spec.JobTemplate.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers", len(pod.Containers))
	}
	c := pod.Containers[0]
	if !slices.Equal(c.Args, []string{"topology", "ensure"}) {
		t.Errorf("args %v, want the topology ensure a Job from it runs by default", c.Args)
	}
	image, tag, _ := strings.Cut(c.Image, ":")
	if !strings.HasSuffix(image, "cactusctl") || (ov.production && (!strings.Contains(image, "/") || tag == "dev")) {
		t.Errorf("image %q: want the cactusctl image (a release tag in production)", c.Image)
	}
	sc := c.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Error("cactusctl container: want a read-only root and no privilege escalation")
	}
	env := r.containerEnv(t, c)
	if ov.production && env["CACTUS_NATS_USER"] != string(bus.Operator) {
		t.Errorf("cactusctl connects to NATS as %q, want %s", env["CACTUS_NATS_USER"], bus.Operator)
	}
	if ov.production {
		mounted := slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool {
			return strings.HasPrefix(env["CACTUS_NATS_CA"], m.MountPath+"/")
		})
		if !mounted {
			t.Errorf("cactusctl: CACTUS_NATS_CA %s is on no mounted volume", env["CACTUS_NATS_CA"])
		}
	}
}
