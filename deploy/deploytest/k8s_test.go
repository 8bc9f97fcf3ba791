package deploytest

import (
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	appsv1 "k8s.io/api/apps/v1"
	autoscalingv2 "k8s.io/api/autoscaling/v2"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"

	"github.com/cactus-comments/appservice/pkg/bus"
	"github.com/cactus-comments/appservice/pkg/natsconf"
	"github.com/cactus-comments/appservice/pkg/service"
)

// rendered is a kustomization's output, every object decoded into its API
// type.
type rendered struct {
	namespaces    []*corev1.Namespace
	configMaps    []*corev1.ConfigMap
	secrets       []*corev1.Secret
	services      []*corev1.Service
	deployments   []*appsv1.Deployment
	hpas          []*autoscalingv2.HorizontalPodAutoscaler
	pdbs          []*policyv1.PodDisruptionBudget
	netpols       []*networkingv1.NetworkPolicy
	scaledObjects []*scaledObject
	cronJobs      []*batchv1.CronJob
}

// render runs kustomize (the library kubectl uses) on dir and decodes every
// object strictly: a field the API type does not have fails, as
// `kubectl apply --validate=strict` would.
func render(t *testing.T, dir string) *rendered {
	t.Helper()
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize %s: %v", dir, err)
	}
	r := &rendered{}
	for _, res := range m.Resources() {
		gvk := res.GetGvk()
		y, err := res.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		id := gvk.ApiVersion() + "/" + gvk.Kind
		var obj any
		switch id {
		case "v1/Namespace":
			o := &corev1.Namespace{}
			r.namespaces, obj = append(r.namespaces, o), o
		case "v1/ConfigMap":
			o := &corev1.ConfigMap{}
			r.configMaps, obj = append(r.configMaps, o), o
		case "v1/Secret":
			o := &corev1.Secret{}
			r.secrets, obj = append(r.secrets, o), o
		case "v1/Service":
			o := &corev1.Service{}
			r.services, obj = append(r.services, o), o
		case "apps/v1/Deployment":
			o := &appsv1.Deployment{}
			r.deployments, obj = append(r.deployments, o), o
		case "autoscaling/v2/HorizontalPodAutoscaler":
			o := &autoscalingv2.HorizontalPodAutoscaler{}
			r.hpas, obj = append(r.hpas, o), o
		case "policy/v1/PodDisruptionBudget":
			o := &policyv1.PodDisruptionBudget{}
			r.pdbs, obj = append(r.pdbs, o), o
		case "networking.k8s.io/v1/NetworkPolicy":
			o := &networkingv1.NetworkPolicy{}
			r.netpols, obj = append(r.netpols, o), o
		case "batch/v1/CronJob":
			o := &batchv1.CronJob{}
			r.cronJobs, obj = append(r.cronJobs, o), o
		case "keda.sh/v1alpha1/ScaledObject":
			o := &scaledObject{}
			r.scaledObjects, obj = append(r.scaledObjects, o), o
		default:
			t.Fatalf("%s %s: no API type known to this test; add one", id, res.GetName())
		}
		if err := decodeStrict(y, obj); err != nil {
			t.Fatalf("%s %s: %v", id, res.GetName(), err)
		}
	}
	return r
}

// decodeStrict decodes a manifest the way the API server sees it with
// strict field validation: YAML turned into JSON without regard to the
// target type (as kubectl does, so a bare number stays a number where the
// API wants a string), then decoded case-sensitively with unknown and
// duplicate fields refused.
func decodeStrict(y []byte, obj any) error {
	j, err := yaml.YAMLToJSONStrict(y)
	if err != nil {
		return err
	}
	strict, err := kjson.UnmarshalStrict(j, obj)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

func (r *rendered) deployment(name string) *appsv1.Deployment {
	for _, d := range r.deployments {
		if d.Name == name {
			return d
		}
	}
	return nil
}

func (r *rendered) configMap(name string) *corev1.ConfigMap {
	for _, c := range r.configMaps {
		if c.Name == name {
			return c
		}
	}
	return nil
}

func (r *rendered) secret(name string) *corev1.Secret {
	for _, s := range r.secrets {
		if s.Name == name {
			return s
		}
	}
	return nil
}

func secretValues(s *corev1.Secret) map[string]string {
	out := map[string]string{}
	for k, v := range s.Data {
		out[k] = string(v)
	}
	for k, v := range s.StringData {
		out[k] = v
	}
	return out
}

// containerEnv is the CACTUS_* environment a container gets from its
// envFrom sources and env entries, in Kubernetes' precedence order.
func (r *rendered) containerEnv(t *testing.T, c corev1.Container) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, src := range c.EnvFrom {
		switch {
		case src.ConfigMapRef != nil:
			cm := r.configMap(src.ConfigMapRef.Name)
			if cm == nil {
				t.Fatalf("container %s: envFrom ConfigMap %s is not in the kustomization", c.Name, src.ConfigMapRef.Name)
			}
			for k, v := range cm.Data {
				env[src.Prefix+k] = v
			}
		case src.SecretRef != nil:
			s := r.secret(src.SecretRef.Name)
			if s == nil && slices.ContainsFunc(externalSecrets, func(p string) bool { return strings.HasPrefix(src.SecretRef.Name, p) }) {
				continue // supplied by an overlay (see checkSecrets)
			}
			if s == nil {
				t.Fatalf("container %s: envFrom Secret %s is not in the kustomization", c.Name, src.SecretRef.Name)
			}
			for k, v := range secretValues(s) {
				env[src.Prefix+k] = v
			}
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			env[e.Name] = e.Value
		} else if strings.HasPrefix(e.Name, "CACTUS_") {
			t.Errorf("container %s: %s from valueFrom cannot be checked; put it in the ConfigMap or Secret", c.Name, e.Name)
		}
	}
	return env
}

// Deployments, their scaler and the durable consumers each may scale on
// (from pkg/bus, the one place the topology is declared).
var (
	workerConsumers = map[string][]string{
		"botworker":   groupConsumers((bus.Topology{}).BotGroup()),
		"provisioner": {bus.ConsumerModeration, bus.ConsumerJobs},
	}
	// Deployments that consume a partitioned group.
	partitionedWorkers = map[string]bus.PartitionGroup{"botworker": (bus.Topology{}).BotGroup()}
	deploymentNames    = []string{"botworker", "gateway", "provisioner"}
)

func groupConsumers(g bus.PartitionGroup) []string {
	cs := make([]string, g.Partitions)
	for p := range cs {
		cs[p] = g.Consumer(p)
	}
	return cs
}

// The peers the NetworkPolicies are written for (see
// base/networkpolicies.yaml): Synapse in namespace matrix, Prometheus in
// monitoring, KEDA in keda.
var (
	homeserverPeer = peer{ns: "matrix", labels: map[string]string{"app.kubernetes.io/name": "synapse"}}
	prometheusPeer = peer{ns: "monitoring", labels: map[string]string{"app.kubernetes.io/name": "prometheus"}}
	kedaPeer       = peer{ns: "keda", labels: map[string]string{"app": "keda-operator"}}
)

type overlay struct {
	name, dir  string
	production bool
}

var overlays = []overlay{
	{"base", "deploy/k8s/base", false},
	{"production", "deploy/k8s/overlays/production", true},
}

// externalSecrets are the Secrets base refers to but does not hold: the
// installation's tokens and NATS passwords, which an overlay supplies.
var externalSecrets = []string{"cactus-tokens", "cactus-nats-"}

func TestKubernetes(t *testing.T) {
	root := repoRoot(t)
	cf := loadConfigFacts(t)
	nv := loadNATSValues(t)
	for _, ov := range overlays {
		t.Run(ov.name, func(t *testing.T) {
			dir := filepath.Join(root, filepath.FromSlash(ov.dir))
			if ov.production {
				// As deploy/k8s/README.md has the operator make them.
				dir = productionWithSecrets(t)
			}
			r := render(t, dir)
			t.Run("objects", func(t *testing.T) { checkObjects(t, r, ov) })
			t.Run("secrets", func(t *testing.T) { checkSecrets(t, r, ov) })
			t.Run("cactusctl", func(t *testing.T) { checkCactusctlJob(t, r, ov) })
			t.Run("config", func(t *testing.T) { checkConfig(t, r, cf, nv, ov) })
			for _, name := range deploymentNames {
				t.Run("deployment/"+name, func(t *testing.T) { checkDeployment(t, r, cf, ov, name) })
			}
			t.Run("gateway-service", func(t *testing.T) { checkGatewayService(t, r, cf) })
			t.Run("autoscaling", func(t *testing.T) { checkAutoscaling(t, r, nv) })
			t.Run("disruption-budgets", func(t *testing.T) { checkPDBs(t, r) })
			t.Run("network-policies", func(t *testing.T) { checkNetworkPolicies(t, r, cf, nv, ov) })
		})
	}
}

func checkObjects(t *testing.T, r *rendered, ov overlay) {
	if len(r.namespaces) != 1 || r.namespaces[0].Name != "cactus" {
		t.Fatalf("want exactly the namespace cactus, got %d namespaces", len(r.namespaces))
	}
	ns := r.namespaces[0]
	if ns.Labels["pod-security.kubernetes.io/enforce"] != "restricted" {
		t.Error("namespace cactus does not enforce the restricted pod security standard")
	}
	var names []string
	for _, d := range r.deployments {
		names = append(names, d.Name)
		if d.Namespace != "cactus" {
			t.Errorf("deployment %s in namespace %q", d.Name, d.Namespace)
		}
	}
	slices.Sort(names)
	if !slices.Equal(names, deploymentNames) {
		t.Fatalf("deployments %v, want %v", names, deploymentNames)
	}
	for _, p := range r.netpols {
		if p.Namespace != "cactus" && !(ov.production && p.Namespace == "nats") {
			t.Errorf("NetworkPolicy %s in namespace %q", p.Name, p.Namespace)
		}
	}
}

// checkConfig: the ConfigMap and Secret hold every variable the services
// require, nothing they do not read, no token outside the Secret, and the
// services' own validation accepts the result.
func checkConfig(t *testing.T, r *rendered, cf configFacts, nv natsValues, ov overlay) {
	if len(r.configMaps) != 1 {
		t.Fatalf("%d ConfigMaps, want 1", len(r.configMaps))
	}
	cm := r.configMaps[0]
	for k := range cm.Data {
		if cf.secrets[k] {
			t.Errorf("%s is a secret but sits in ConfigMap %s", k, cm.Name)
		}
	}
	if err := cf.checkKnown(cm.Data); err != nil {
		t.Error(err)
	}
	for _, d := range r.deployments {
		env := r.containerEnv(t, d.Spec.Template.Spec.Containers[0])
		if err := cf.checkKnown(env); err != nil {
			t.Errorf("%s: %v", d.Name, err)
		}
		if env["CACTUS_NATS_TOPOLOGY"] != "check" {
			t.Errorf("%s: CACTUS_NATS_TOPOLOGY %q: its NATS user may not create the topology, want check", d.Name, env["CACTUS_NATS_TOPOLOGY"])
		}
		if !ov.production {
			continue // the tokens and NATS users come from an overlay
		}
		for _, req := range cf.required() {
			if _, ok := env[req]; !ok {
				t.Errorf("%s: required %s is in neither the ConfigMap nor a Secret", d.Name, req)
			}
		}
		cfg, err := cf.loadConfig(t, env)
		if err != nil {
			t.Errorf("%s: the service would refuse this configuration: %v", d.Name, err)
			continue
		}
		if cfg.NATSUser != d.Name || cfg.NATSPassword == "" {
			t.Errorf("%s connects to NATS as %q, want its own user", d.Name, cfg.NATSUser)
		}
		c := d.Spec.Template.Spec.Containers[0]
		if !strings.HasPrefix(cfg.NATSURL, "tls://") || cfg.NATSCA == "" ||
			!slices.ContainsFunc(c.VolumeMounts, func(m corev1.VolumeMount) bool { return strings.HasPrefix(cfg.NATSCA, m.MountPath+"/") }) {
			t.Errorf("%s: NATS %s with CA %q: want tls:// and the CA on a mounted volume", d.Name, cfg.NATSURL, cfg.NATSCA)
		}
	}
	env := map[string]string{}
	for k, v := range cm.Data {
		env[k] = v
	}

	natsHost, natsPort := hostPort(t, cf.value(env, "CACTUS_NATS_URL"))
	if want := nv.serviceHost(); natsHost != want || natsPort != 4222 {
		t.Errorf("CACTUS_NATS_URL points at %s:%d, want %s:4222 (the Helm release's client service)", natsHost, natsPort, want)
	}
	replicas := cf.value(env, "CACTUS_NATS_REPLICAS")
	if ov.production && replicas != strconv.Itoa(nv.Config.Cluster.Replicas) {
		t.Errorf("CACTUS_NATS_REPLICAS %s, but the production NATS cluster has %d servers", replicas, nv.Config.Cluster.Replicas)
	}
}

func resolvePort(c corev1.Container, p intstr.IntOrString) (int, bool) {
	if p.Type == intstr.Int {
		return p.IntValue(), true
	}
	for _, cp := range c.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort), true
		}
	}
	return 0, false
}

func checkDeployment(t *testing.T, r *rendered, cf configFacts, ov overlay, name string) {
	d := r.deployment(name)
	if d == nil {
		t.Fatalf("no deployment %s", name)
	}
	if d.Spec.Replicas != nil {
		t.Errorf("spec.replicas is set: the autoscaler owns it, and every apply would reset it")
	}
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Fatalf("selector does not match the pod template's labels")
	}
	pod := d.Spec.Template.Spec
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("automountServiceAccountToken should be false: the services never call the Kubernetes API")
	}
	psc := pod.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Error("pod securityContext.runAsNonRoot is not true")
	}
	if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Error("pod seccompProfile is not RuntimeDefault")
	}
	if psc != nil && psc.RunAsUser != nil && *psc.RunAsUser == 0 {
		t.Error("pod runAsUser 0")
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	env := r.containerEnv(t, c)

	image, tag, _ := strings.Cut(c.Image, ":")
	if !strings.HasSuffix(image, name) || tag == "" {
		t.Errorf("image %q: want the %s image with a tag", c.Image, name)
	}
	if ov.production && (!strings.Contains(image, "/") || tag == "dev" || tag == "latest") {
		t.Errorf("production image %q: want a registry and a release tag", c.Image)
	}

	sc := c.SecurityContext
	switch {
	case sc == nil:
		t.Fatal("container has no securityContext")
	default:
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Error("allowPrivilegeEscalation is not false")
		}
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Error("readOnlyRootFilesystem is not true")
		}
		if sc.Privileged != nil && *sc.Privileged {
			t.Error("privileged")
		}
		if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
			t.Error("capabilities: want drop [ALL] and nothing added")
		}
		if sc.RunAsUser != nil && *sc.RunAsUser == 0 {
			t.Error("container runAsUser 0")
		}
	}

	for _, kind := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, okReq := c.Resources.Requests[kind]
		lim, okLim := c.Resources.Limits[kind]
		if !okReq || !okLim {
			t.Errorf("resources: %s request and limit must both be set", kind)
			continue
		}
		if req.Cmp(lim) > 0 {
			t.Errorf("resources: %s request %s above its limit %s", kind, req.String(), lim.String())
		}
	}
	if gml := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "GOMEMLIMIT" }); gml < 0 ||
		c.Env[gml].ValueFrom == nil || c.Env[gml].ValueFrom.ResourceFieldRef == nil || c.Env[gml].ValueFrom.ResourceFieldRef.Resource != "limits.memory" {
		t.Error("GOMEMLIMIT should follow limits.memory, so the Go heap stays under it")
	}

	ports := map[int]string{}
	for _, p := range c.Ports {
		ports[int(p.ContainerPort)] = p.Name
		if p.Protocol != "" && p.Protocol != corev1.ProtocolTCP {
			t.Errorf("port %s: protocol %s", p.Name, p.Protocol)
		}
	}
	admin := cf.port(t, env, "CACTUS_ADMIN_ADDR")
	if ports[admin] != "admin" {
		t.Errorf("no container port named admin on %d (CACTUS_ADMIN_ADDR)", admin)
	}
	if name == "gateway" {
		listen := cf.port(t, env, "CACTUS_LISTEN_ADDR")
		if ports[listen] != "appservice" {
			t.Errorf("no container port named appservice on %d (CACTUS_LISTEN_ADDR)", listen)
		}
	}

	probes := []struct {
		kind  string
		probe *corev1.Probe
		path  string
	}{
		{"startup", c.StartupProbe, "/livez"},
		{"liveness", c.LivenessProbe, "/livez"},
		{"readiness", c.ReadinessProbe, "/readyz"},
	}
	for _, p := range probes {
		// Against the services' real admin handler, before readiness: a
		// liveness path must answer 200 (or a pod still starting would be
		// killed), the readiness path 503 (it must be the one that tracks
		// readiness), neither 404.
		if p.probe != nil && p.probe.HTTPGet != nil {
			code := adminStatus(p.probe.HTTPGet.Path)
			if want := map[string]int{"readiness": http.StatusServiceUnavailable}[p.kind]; (want == 0 && code != http.StatusOK) || (want != 0 && code != want) {
				t.Errorf("%s probe: the admin handler answers %s with %d before the service is ready", p.kind, p.probe.HTTPGet.Path, code)
			}
		}
		if p.probe == nil || p.probe.HTTPGet == nil {
			t.Errorf("%s probe: want an httpGet on %s", p.kind, p.path)
			continue
		}
		got, ok := resolvePort(c, p.probe.HTTPGet.Port)
		if p.probe.HTTPGet.Path != p.path || !ok || got != admin {
			t.Errorf("%s probe: GET %s on port %v, want %s on the admin port %d", p.kind, p.probe.HTTPGet.Path, p.probe.HTTPGet.Port.String(), p.path, admin)
		}
	}
	if ann := d.Spec.Template.Annotations; ann["prometheus.io/scrape"] == "true" {
		if ann["prometheus.io/port"] != strconv.Itoa(admin) || adminStatus(ann["prometheus.io/path"]) != http.StatusOK {
			t.Errorf("prometheus.io annotations point at :%s%s, which the admin handler does not serve as metrics", ann["prometheus.io/port"], ann["prometheus.io/path"])
		}
	}
	// The first NATS connection is retried for up to two minutes
	// (service.Start): liveness must not kill a pod still connecting.
	if sp := c.StartupProbe; sp != nil {
		period, failures := max(sp.PeriodSeconds, 10), max(sp.FailureThreshold, 3)
		if sp.PeriodSeconds == 0 {
			period = 10
		}
		if time.Duration(period*failures)*time.Second < 2*time.Minute {
			t.Errorf("startup probe gives up after %ds, before the two minutes the first NATS connection may take", period*failures)
		}
	}

	// The drain: preStop sleep, then SIGTERM, then up to
	// CACTUS_SHUTDOWN_TIMEOUT of draining, all inside the grace period.
	var preStop time.Duration
	if lc := c.Lifecycle; lc != nil && lc.PreStop != nil {
		switch {
		case lc.PreStop.Exec != nil:
			t.Error("preStop exec: the distroless image has no shell and no sleep binary; use the sleep action")
		case lc.PreStop.Sleep != nil:
			preStop = time.Duration(lc.PreStop.Sleep.Seconds) * time.Second
		}
	}
	if preStop <= 0 {
		t.Error("no preStop sleep: SIGTERM would arrive while endpoints still route to the pod")
	}
	drain := cf.duration(t, env, "CACTUS_SHUTDOWN_TIMEOUT")
	grace := 30 * time.Second
	if pod.TerminationGracePeriodSeconds != nil {
		grace = time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second
	}
	if grace <= preStop+drain {
		t.Errorf("terminationGracePeriodSeconds %v must exceed preStop %v + CACTUS_SHUTDOWN_TIMEOUT %v", grace, preStop, drain)
	}
}

// adminStatus is the status the services' admin handler (pkg/service,
// served on CACTUS_ADMIN_ADDR by every service) answers GET path with,
// before the service has declared itself ready.
func adminStatus(path string) int {
	rt := &service.Runtime{Metrics: prometheus.NewRegistry()}
	rec := httptest.NewRecorder()
	rt.AdminHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code
}

func checkGatewayService(t *testing.T, r *rendered, cf configFacts) {
	d := r.deployment("gateway")
	c := d.Spec.Template.Spec.Containers[0]
	env := r.containerEnv(t, c)
	listen := cf.port(t, env, "CACTUS_LISTEN_ADDR")
	var svc *corev1.Service
	for _, s := range r.services {
		if s.Name == "gateway" {
			svc = s
		}
	}
	if svc == nil {
		t.Fatal("no Service gateway")
	}
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(d.Spec.Template.Labels)) || len(svc.Spec.Selector) == 0 {
		t.Fatal("Service gateway does not select the gateway pods")
	}
	found := false
	for _, p := range svc.Spec.Ports {
		if got, ok := resolvePort(c, p.TargetPort); ok && got == listen {
			found = true
		}
	}
	if !found {
		t.Errorf("Service gateway has no port reaching CACTUS_LISTEN_ADDR %d", listen)
	}
}

// minReplicas is the lowest replica count an autoscaler may leave.
func (r *rendered) minReplicas(name string) (int32, bool) {
	for _, h := range r.hpas {
		if h.Spec.ScaleTargetRef.Name == name {
			return ptrOr(h.Spec.MinReplicas, 1), true
		}
	}
	for _, so := range r.scaledObjects {
		if so.Spec.ScaleTargetRef.Name == name {
			return ptrOr(so.Spec.MinReplicaCount, 0), true
		}
	}
	return 0, false
}

func ptrOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}

func checkAutoscaling(t *testing.T, r *rendered, nv natsValues) {
	scalers := map[string]int{}
	for _, h := range r.hpas {
		ref := h.Spec.ScaleTargetRef
		scalers[ref.Name]++
		if ref.Name != "gateway" || ref.Kind != "Deployment" || ref.APIVersion != "apps/v1" {
			t.Errorf("HPA %s targets %s %s %s; only the gateway scales on CPU", h.Name, ref.APIVersion, ref.Kind, ref.Name)
		}
		if ptrOr(h.Spec.MinReplicas, 1) < 2 || h.Spec.MaxReplicas < ptrOr(h.Spec.MinReplicas, 1) {
			t.Errorf("HPA %s: replicas %d..%d; want at least 2 (the homeserver's only way in)", h.Name, ptrOr(h.Spec.MinReplicas, 1), h.Spec.MaxReplicas)
		}
		cpu := slices.ContainsFunc(h.Spec.Metrics, func(m autoscalingv2.MetricSpec) bool {
			return m.Type == autoscalingv2.ResourceMetricSourceType && m.Resource != nil && m.Resource.Name == corev1.ResourceCPU
		})
		if !cpu {
			t.Errorf("HPA %s does not scale on CPU", h.Name)
		}
	}

	natsSvc := nv.serviceHost()
	wantEndpoint := net.JoinHostPort(nv.headlessHost(), strconv.Itoa(nv.Config.Monitor.Port))
	topology := map[string]string{} // consumer -> stream
	for _, c := range (bus.Topology{}).Consumers() {
		topology[c.Config.Durable] = c.Stream
	}
	for _, so := range r.scaledObjects {
		ref := so.Spec.ScaleTargetRef
		scalers[ref.Name]++
		allowed, ok := workerConsumers[ref.Name]
		if !ok || (ref.Kind != "" && ref.Kind != "Deployment") || (ref.APIVersion != "" && ref.APIVersion != "apps/v1") || r.deployment(ref.Name) == nil {
			t.Errorf("ScaledObject %s targets %s %s, which is no worker Deployment", so.Name, ref.Kind, ref.Name)
			continue
		}
		minR, maxR := ptrOr(so.Spec.MinReplicaCount, 0), ptrOr(so.Spec.MaxReplicaCount, 100)
		if minR < 1 || maxR < minR {
			// Scaling to zero would leave the bot silent until its lag
			// crosses activation, and alias queries (provisioner) without
			// anyone to answer.
			t.Errorf("ScaledObject %s: replicas %d..%d; want at least 1", so.Name, minR, maxR)
		}
		if ref.Name == "provisioner" && minR < 2 {
			t.Errorf("ScaledObject %s: min %d; alias queries have no lag KEDA could see, keep 2 answering", so.Name, minR)
		}
		if len(so.Spec.Triggers) == 0 {
			t.Errorf("ScaledObject %s has no triggers", so.Name)
		}
		for _, tr := range so.Spec.Triggers {
			for _, err := range checkNATSJetStreamTrigger(tr) {
				t.Errorf("ScaledObject %s trigger %s: %v", so.Name, tr.Name, err)
			}
			md := tr.Metadata
			if !slices.Contains(allowed, md["consumer"]) {
				t.Errorf("ScaledObject %s scales on consumer %q, not one of %s's %v", so.Name, md["consumer"], ref.Name, allowed)
			}
			if stream, ok := topology[md["consumer"]]; !ok || stream != md["stream"] {
				t.Errorf("ScaledObject %s: consumer %q on stream %q is not in pkg/bus's topology", so.Name, md["consumer"], md["stream"])
			}
			if md["natsServerMonitoringEndpoint"] != wantEndpoint {
				// The scaler reaches each server as <server name>.<endpoint
				// host> in a cluster: that resolves through the headless
				// service only.
				t.Errorf("ScaledObject %s: monitoring endpoint %q, want %q (headless service of NATS %s)", so.Name, md["natsServerMonitoringEndpoint"], wantEndpoint, natsSvc)
			}
			if useHTTPS, _ := strconv.ParseBool(md["useHttps"]); useHTTPS {
				t.Errorf("ScaledObject %s: useHttps, but the NATS monitoring port serves plain http", so.Name)
			}
			if md["account"] != natsconf.Account {
				t.Errorf("ScaledObject %s: account %q; our streams live in the NATS account %s (nats-auth-values.yaml)", so.Name, md["account"], natsconf.Account)
			}
		}
		if g, ok := partitionedWorkers[ref.Name]; ok {
			for _, err := range checkPartitionedScaling(so, g) {
				t.Errorf("ScaledObject %s: %v", so.Name, err)
			}
		}
	}
	for _, name := range deploymentNames {
		if scalers[name] != 1 {
			t.Errorf("deployment %s has %d autoscalers, want exactly 1", name, scalers[name])
		}
	}
}

func checkPDBs(t *testing.T, r *rendered) {
	for _, d := range r.deployments {
		var match []*policyv1.PodDisruptionBudget
		for _, p := range r.pdbs {
			sel, err := metav1.LabelSelectorAsSelector(p.Spec.Selector)
			if err != nil {
				t.Fatalf("PDB %s: %v", p.Name, err)
			}
			if !sel.Empty() && sel.Matches(labels.Set(d.Spec.Template.Labels)) {
				match = append(match, p)
			}
		}
		if len(match) != 1 {
			t.Errorf("deployment %s is covered by %d PodDisruptionBudgets, want 1", d.Name, len(match))
			continue
		}
		p := match[0]
		minR, _ := r.minReplicas(d.Name)
		switch {
		case p.Spec.MaxUnavailable != nil:
			if v, err := intstr.GetScaledValueFromIntOrPercent(p.Spec.MaxUnavailable, int(minR), true); err != nil || v < 1 {
				t.Errorf("PDB %s: maxUnavailable %s allows no eviction: node drains would hang", p.Name, p.Spec.MaxUnavailable.String())
			}
		case p.Spec.MinAvailable != nil:
			if v, err := intstr.GetScaledValueFromIntOrPercent(p.Spec.MinAvailable, int(minR), true); err != nil || v >= int(minR) {
				t.Errorf("PDB %s: minAvailable %s at %d replicas allows no eviction", p.Name, p.Spec.MinAvailable.String(), minR)
			}
		default:
			t.Errorf("PDB %s sets neither minAvailable nor maxUnavailable", p.Name)
		}
	}
}

// peer is a pod somewhere in the cluster, for NetworkPolicy evaluation.
type peer struct {
	ns     string
	labels map[string]string
}

func selects(sel *metav1.LabelSelector, l map[string]string) bool {
	s, err := metav1.LabelSelectorAsSelector(sel)
	return err == nil && s.Matches(labels.Set(l))
}

// peerMatches reports whether a NetworkPolicyPeer of a policy in namespace
// policyNS covers pod p.
func peerMatches(np networkingv1.NetworkPolicyPeer, policyNS string, p peer) bool {
	if np.IPBlock != nil {
		return false
	}
	nsOK := p.ns == policyNS
	if np.NamespaceSelector != nil {
		nsOK = selects(np.NamespaceSelector, map[string]string{"kubernetes.io/metadata.name": p.ns})
	}
	return nsOK && (np.PodSelector == nil || selects(np.PodSelector, p.labels))
}

func portMatches(ports []networkingv1.NetworkPolicyPort, proto corev1.Protocol, port int, named map[string]int) bool {
	if len(ports) == 0 {
		return true
	}
	for _, pp := range ports {
		if pr := ptrOr(pp.Protocol, corev1.ProtocolTCP); pr != proto {
			continue
		}
		if pp.Port == nil {
			return true
		}
		n := pp.Port.IntValue()
		if pp.Port.Type == intstr.String {
			n = named[pp.Port.StrVal]
		}
		if n == port || (pp.EndPort != nil && port >= n && port <= int(*pp.EndPort)) {
			return true
		}
	}
	return false
}

func hasType(p *networkingv1.NetworkPolicy, ty networkingv1.PolicyType) bool {
	return slices.Contains(p.Spec.PolicyTypes, ty) || (len(p.Spec.PolicyTypes) == 0 && ty == networkingv1.PolicyTypeIngress)
}

// ingressAllowed evaluates the policies the way the API defines them: a
// pod no Ingress policy selects is open; otherwise some selecting policy
// must allow the source on the port.
func ingressAllowed(pols []*networkingv1.NetworkPolicy, dst peer, named map[string]int, src peer, proto corev1.Protocol, port int) bool {
	isolated := false
	for _, p := range pols {
		if p.Namespace != dst.ns || !hasType(p, networkingv1.PolicyTypeIngress) || !selects(&p.Spec.PodSelector, dst.labels) {
			continue
		}
		isolated = true
		for _, rule := range p.Spec.Ingress {
			fromOK := len(rule.From) == 0 || slices.ContainsFunc(rule.From, func(np networkingv1.NetworkPolicyPeer) bool { return peerMatches(np, p.Namespace, src) })
			if fromOK && portMatches(rule.Ports, proto, port, named) {
				return true
			}
		}
	}
	return !isolated
}

// egressAllowed is ingressAllowed for the other direction.
func egressAllowed(pols []*networkingv1.NetworkPolicy, src peer, dst peer, proto corev1.Protocol, port int) bool {
	isolated := false
	for _, p := range pols {
		if p.Namespace != src.ns || !hasType(p, networkingv1.PolicyTypeEgress) || !selects(&p.Spec.PodSelector, src.labels) {
			continue
		}
		isolated = true
		for _, rule := range p.Spec.Egress {
			toOK := len(rule.To) == 0 || slices.ContainsFunc(rule.To, func(np networkingv1.NetworkPolicyPeer) bool { return peerMatches(np, p.Namespace, dst) })
			if toOK && portMatches(rule.Ports, proto, port, nil) {
				return true
			}
		}
	}
	return !isolated
}

func checkNetworkPolicies(t *testing.T, r *rendered, cf configFacts, nv natsValues, ov overlay) {
	natsPod := peer{ns: nv.namespace(), labels: map[string]string{"app.kubernetes.io/name": "nats"}}
	stranger := peer{ns: "default", labels: map[string]string{"app": "anything"}}
	dns := peer{ns: "kube-system", labels: map[string]string{"k8s-app": "kube-dns"}}
	for _, d := range r.deployments {
		c := d.Spec.Template.Spec.Containers[0]
		env := r.containerEnv(t, c)
		pod := peer{ns: d.Namespace, labels: d.Spec.Template.Labels}
		named := map[string]int{}
		for _, p := range c.Ports {
			named[p.Name] = int(p.ContainerPort)
		}
		admin := cf.port(t, env, "CACTUS_ADMIN_ADDR")

		if !ingressAllowed(r.netpols, pod, named, prometheusPeer, corev1.ProtocolTCP, admin) {
			t.Errorf("%s: Prometheus cannot reach the admin port %d", d.Name, admin)
		}
		if ingressAllowed(r.netpols, pod, named, stranger, corev1.ProtocolTCP, admin) {
			t.Errorf("%s: any pod can reach the admin port %d", d.Name, admin)
		}
		if d.Name == "gateway" {
			listen := cf.port(t, env, "CACTUS_LISTEN_ADDR")
			if !ingressAllowed(r.netpols, pod, named, homeserverPeer, corev1.ProtocolTCP, listen) {
				t.Errorf("gateway: the homeserver cannot reach port %d", listen)
			}
			if ingressAllowed(r.netpols, pod, named, stranger, corev1.ProtocolTCP, listen) {
				t.Errorf("gateway: any pod can reach port %d", listen)
			}
		} else if ingressAllowed(r.netpols, pod, named, homeserverPeer, corev1.ProtocolTCP, admin+1) {
			t.Errorf("%s: reachable from the homeserver on ports it does not serve", d.Name)
		}

		if !egressAllowed(r.netpols, pod, natsPod, corev1.ProtocolTCP, 4222) {
			t.Errorf("%s cannot reach NATS on 4222", d.Name)
		}
		if !egressAllowed(r.netpols, pod, dns, corev1.ProtocolUDP, 53) {
			t.Errorf("%s cannot resolve names (DNS)", d.Name)
		}
		hsHost, hsPort := hostPort(t, cf.value(env, "CACTUS_HOMESERVER_URL"))
		hsPod := homeserverPeer
		if !strings.HasSuffix(hsHost, "."+homeserverPeer.ns+".svc.cluster.local") {
			hsPod = peer{ns: "elsewhere", labels: map[string]string{}} // outside the cluster
		}
		if !egressAllowed(r.netpols, pod, hsPod, corev1.ProtocolTCP, hsPort) {
			t.Errorf("%s cannot reach the homeserver at %s:%d", d.Name, hsHost, hsPort)
		}
	}

	if !ov.production {
		return
	}
	// The NATS side (namespace nats): our pods are clients, KEDA reads
	// the monitoring port, and the servers route to each other.
	cactusPod := peer{ns: "cactus", labels: map[string]string{"app.kubernetes.io/name": "botworker"}}
	if !ingressAllowed(r.netpols, natsPod, nil, cactusPod, corev1.ProtocolTCP, 4222) {
		t.Error("NATS does not accept clients from namespace cactus")
	}
	if !ingressAllowed(r.netpols, natsPod, nil, kedaPeer, corev1.ProtocolTCP, nv.Config.Monitor.Port) {
		t.Error("KEDA cannot read the NATS monitoring port")
	}
	if !ingressAllowed(r.netpols, natsPod, nil, natsPod, corev1.ProtocolTCP, 6222) {
		t.Error("NATS servers cannot route to each other (6222)")
	}
	if ingressAllowed(r.netpols, natsPod, nil, stranger, corev1.ProtocolTCP, 4222) {
		t.Error("NATS accepts clients from any namespace")
	}
}

// TestNetworkPolicyEvaluation pins the evaluation helpers above to the
// API's semantics, so a policy check cannot pass by a helper's mistake.
func TestNetworkPolicyEvaluation(t *testing.T) {
	tcp := corev1.ProtocolTCP
	port := func(p intstr.IntOrString) []networkingv1.NetworkPolicyPort {
		return []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p}}
	}
	app := peer{ns: "a", labels: map[string]string{"app": "x"}}
	friend := peer{ns: "b", labels: map[string]string{"role": "friend"}}
	other := peer{ns: "b", labels: map[string]string{"role": "other"}}
	pol := func(rules ...networkingv1.NetworkPolicyIngressRule) *networkingv1.NetworkPolicy {
		return &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Namespace: "a"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "x"}},
				PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
				Ingress:     rules,
			},
		}
	}
	fromFriend := []networkingv1.NetworkPolicyPeer{{
		NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "b"}},
		PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"role": "friend"}},
	}}
	named := map[string]int{"web": 8080}
	tests := []struct {
		name string
		pols []*networkingv1.NetworkPolicy
		src  peer
		port int
		want bool
	}{
		{"no policy: open", nil, other, 8080, true},
		{"isolated, no rules", []*networkingv1.NetworkPolicy{pol()}, friend, 8080, false},
		{"peer and named port", []*networkingv1.NetworkPolicy{pol(networkingv1.NetworkPolicyIngressRule{From: fromFriend, Ports: port(intstr.FromString("web"))})}, friend, 8080, true},
		{"wrong pod", []*networkingv1.NetworkPolicy{pol(networkingv1.NetworkPolicyIngressRule{From: fromFriend, Ports: port(intstr.FromString("web"))})}, other, 8080, false},
		{"wrong port", []*networkingv1.NetworkPolicy{pol(networkingv1.NetworkPolicyIngressRule{From: fromFriend, Ports: port(intstr.FromInt32(9090))})}, friend, 8080, false},
		{"no from: everyone", []*networkingv1.NetworkPolicy{pol(networkingv1.NetworkPolicyIngressRule{Ports: port(intstr.FromInt32(8080))})}, other, 8080, true},
		{"pod selector alone: own namespace only", []*networkingv1.NetworkPolicy{pol(networkingv1.NetworkPolicyIngressRule{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "friend"}}}}})}, friend, 8080, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := ingressAllowed(tc.pols, app, named, tc.src, tcp, tc.port); got != tc.want {
				t.Fatalf("allowed = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestKEDATriggerCheck(t *testing.T) {
	good := map[string]string{
		"natsServerMonitoringEndpoint": "nats-headless.nats.svc.cluster.local:8222",
		"account":                      "$G",
		"stream":                       "S",
		"consumer":                     "C",
		"lagThreshold":                 "10",
	}
	with := func(k, v string) map[string]string {
		m := map[string]string{}
		for a, b := range good {
			m[a] = b
		}
		if v == "" {
			delete(m, k)
		} else {
			m[k] = v
		}
		return m
	}
	tests := []struct {
		name string
		tr   scaleTrigger
		errs int
	}{
		{"documented", scaleTrigger{Type: "nats-jetstream", Metadata: good}, 0},
		{"optional ones", scaleTrigger{Type: "nats-jetstream", Metadata: with("useHttps", "false")}, 0},
		{"unknown key", scaleTrigger{Type: "nats-jetstream", Metadata: with("lagTreshold", "5")}, 1},
		{"missing stream", scaleTrigger{Type: "nats-jetstream", Metadata: with("stream", "")}, 1},
		{"bad threshold", scaleTrigger{Type: "nats-jetstream", Metadata: with("lagThreshold", "ten")}, 1},
		{"bad bool", scaleTrigger{Type: "nats-jetstream", Metadata: with("useHttps", "maybe")}, 1},
		{"other scaler", scaleTrigger{Type: "cpu", Metadata: good}, 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if errs := checkNATSJetStreamTrigger(tc.tr); len(errs) != tc.errs {
				t.Fatalf("%d errors %v, want %d", len(errs), errs, tc.errs)
			}
		})
	}
	var so scaledObject
	if err := decodeStrict([]byte("spec:\n  scaleTargetRef: {name: x}\n  minReplicas: 1\n"), &so); err == nil {
		t.Fatal("an HPA field in a ScaledObject decoded without error")
	}
	if err := decodeStrict([]byte("spec:\n  triggers:\n  - type: x\n    metadata: {lagThreshold: 5}\n"), &so); err == nil {
		t.Fatal("a numeric metadata value decoded without error")
	}
	if err := decodeStrict([]byte("spec:\n  scaletargetref: {name: x}\n"), &so); err == nil {
		t.Fatal("a field in the wrong case decoded without error")
	}
	var d appsv1.Deployment
	if err := decodeStrict([]byte("spec:\n  replicas: 1\n  replicas: 2\n"), &d); err == nil {
		t.Fatal("a duplicate field decoded without error")
	}
}

// quantity parses a resource quantity or fails the test.
func quantity(t *testing.T, s string) resource.Quantity {
	t.Helper()
	q, err := resource.ParseQuantity(s)
	if err != nil {
		t.Fatalf("quantity %q: %v", s, err)
	}
	return q
}
