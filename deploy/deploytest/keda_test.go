package deploytest

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/cactus-comments/appservice/pkg/bus"
)

// scaledObject mirrors the fields of KEDA's ScaledObject (keda.sh/v1alpha1)
// that a manifest may set, so that decoding with unknown fields disallowed
// catches a misspelt or misplaced field. KEDA's own module is not imported:
// it would bring in most of Kubernetes and every cloud SDK.
type scaledObject struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              scaledObjectSpec `json:"spec"`
}

type scaledObjectSpec struct {
	ScaleTargetRef        scaleTarget    `json:"scaleTargetRef"`
	PollingInterval       *int32         `json:"pollingInterval,omitempty"`
	InitialCooldownPeriod *int32         `json:"initialCooldownPeriod,omitempty"`
	CooldownPeriod        *int32         `json:"cooldownPeriod,omitempty"`
	IdleReplicaCount      *int32         `json:"idleReplicaCount,omitempty"`
	MinReplicaCount       *int32         `json:"minReplicaCount,omitempty"`
	MaxReplicaCount       *int32         `json:"maxReplicaCount,omitempty"`
	Advanced              *kedaAdvanced  `json:"advanced,omitempty"`
	Triggers              []scaleTrigger `json:"triggers"`
	Fallback              *kedaFallback  `json:"fallback,omitempty"`
}

type scaleTarget struct {
	APIVersion             string `json:"apiVersion,omitempty"`
	Kind                   string `json:"kind,omitempty"`
	Name                   string `json:"name"`
	EnvSourceContainerName string `json:"envSourceContainerName,omitempty"`
}

type kedaAdvanced struct {
	HorizontalPodAutoscalerConfig *struct {
		Name     string                                         `json:"name,omitempty"`
		Behavior *autoscalingv2.HorizontalPodAutoscalerBehavior `json:"behavior,omitempty"`
	} `json:"horizontalPodAutoscalerConfig,omitempty"`
	RestoreToOriginalReplicaCount bool                  `json:"restoreToOriginalReplicaCount,omitempty"`
	ScalingModifiers              *kedaScalingModifiers `json:"scalingModifiers,omitempty"`
}

// kedaScalingModifiers compose the triggers' metrics into one (KEDA 2.12+).
type kedaScalingModifiers struct {
	Formula          string                         `json:"formula,omitempty"`
	Target           string                         `json:"target,omitempty"`
	ActivationTarget string                         `json:"activationTarget,omitempty"`
	MetricType       autoscalingv2.MetricTargetType `json:"metricType,omitempty"`
}

type kedaFallback struct {
	FailureThreshold int32 `json:"failureThreshold"`
	Replicas         int32 `json:"replicas"`
}

type scaleTrigger struct {
	Type             string `json:"type"`
	Name             string `json:"name,omitempty"`
	UseCachedMetrics bool   `json:"useCachedMetrics,omitempty"`
	// Metadata values are strings in KEDA's CRD: a bare YAML number fails
	// to decode here as it fails KEDA's validation.
	Metadata          map[string]string `json:"metadata"`
	AuthenticationRef *struct {
		Name string `json:"name"`
		Kind string `json:"kind,omitempty"`
	} `json:"authenticationRef,omitempty"`
	MetricType autoscalingv2.MetricTargetType `json:"metricType,omitempty"`
}

// natsJetStreamParams are the trigger metadata parameters the KEDA
// nats-jetstream scaler documents (keda.sh/docs/<version>/scalers/nats-jetstream,
// unchanged from 2.9 through 2.19), with whether the documentation marks
// them optional.
var natsJetStreamParams = map[string]struct {
	optional bool
	check    func(string) error
}{
	"natsServerMonitoringEndpoint": {false, nonEmpty},
	"account":                      {false, nonEmpty},
	"stream":                       {false, nonEmpty},
	"consumer":                     {false, nonEmpty},
	"lagThreshold":                 {false, positiveInt},
	"activationLagThreshold":       {true, nonNegativeInt},
	"useHttps":                     {true, boolean},
}

func nonEmpty(v string) error {
	if v == "" {
		return fmt.Errorf("empty")
	}
	return nil
}

func positiveInt(v string) error {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		return fmt.Errorf("%q is not a positive integer", v)
	}
	return nil
}

func nonNegativeInt(v string) error {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return fmt.Errorf("%q is not a non-negative integer", v)
	}
	return nil
}

func boolean(v string) error {
	if _, err := strconv.ParseBool(v); err != nil {
		return fmt.Errorf("%q is not a boolean", v)
	}
	return nil
}

// checkNATSJetStreamTrigger checks a trigger's metadata against the
// documented parameters: unknown keys fail (KEDA ignores them, so a typo
// would silently fall back to a default), required ones must be there and
// every value must parse as the scaler parses it.
func checkNATSJetStreamTrigger(tr scaleTrigger) []error {
	var errs []error
	if tr.Type != "nats-jetstream" {
		return []error{fmt.Errorf("trigger type %q, want nats-jetstream", tr.Type)}
	}
	keys := make([]string, 0, len(tr.Metadata))
	for k := range tr.Metadata {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		p, ok := natsJetStreamParams[k]
		if !ok {
			errs = append(errs, fmt.Errorf("metadata %q is not a documented nats-jetstream parameter", k))
			continue
		}
		if err := p.check(tr.Metadata[k]); err != nil {
			errs = append(errs, fmt.Errorf("metadata %s: %w", k, err))
		}
	}
	names := make([]string, 0, len(natsJetStreamParams))
	for k := range natsJetStreamParams {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		if _, ok := tr.Metadata[k]; !ok && !natsJetStreamParams[k].optional {
			// Endpoint and account may come from a TriggerAuthentication.
			if tr.AuthenticationRef != nil && (k == "natsServerMonitoringEndpoint" || k == "account") {
				continue
			}
			errs = append(errs, fmt.Errorf("metadata %s is required", k))
		}
	}
	return errs
}

// exprIdentifier is a name KEDA's formula language can refer to.
var exprIdentifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// checkPartitionedScaling checks the ScaledObject of a Deployment that
// consumes a partitioned group: one trigger per partition consumer, a
// formula summing all of them (the total lag: the HPA would otherwise
// follow the most lagging partition, which only its one owner can work
// through) and no more replicas than partitions.
func checkPartitionedScaling(so *scaledObject, g bus.PartitionGroup) []error {
	var errs []error
	want := map[string]bool{}
	for p := range g.Partitions {
		want[g.Consumer(p)] = true
	}
	names := map[string]bool{}
	for _, tr := range so.Spec.Triggers {
		c := tr.Metadata["consumer"]
		switch {
		case !want[c]:
			errs = append(errs, fmt.Errorf("trigger %q reads %q, which is no partition consumer of %s (or is read twice)", tr.Name, c, g.Name))
		case !exprIdentifier.MatchString(tr.Name) || names[tr.Name]:
			errs = append(errs, fmt.Errorf("trigger name %q: the formula needs a unique identifier per trigger", tr.Name))
		}
		delete(want, c)
		names[tr.Name] = true
	}
	for c := range want {
		errs = append(errs, fmt.Errorf("no trigger reads partition consumer %s", c))
	}
	sm := (*kedaScalingModifiers)(nil)
	if so.Spec.Advanced != nil {
		sm = so.Spec.Advanced.ScalingModifiers
	}
	if sm == nil {
		return append(errs, errors.New("no scalingModifiers: the HPA would scale on the most lagging partition, not the total"))
	}
	terms := map[string]bool{}
	for _, term := range strings.Split(sm.Formula, "+") {
		term = strings.TrimSpace(term)
		if !names[term] || terms[term] {
			errs = append(errs, fmt.Errorf("formula %q: term %q is not one trigger's name once", sm.Formula, term))
		}
		terms[term] = true
	}
	if len(terms) != len(names) {
		errs = append(errs, fmt.Errorf("formula %q sums %d of %d triggers", sm.Formula, len(terms), len(names)))
	}
	if err := positiveInt(sm.Target); err != nil {
		errs = append(errs, fmt.Errorf("scalingModifiers target: %w", err))
	}
	if sm.ActivationTarget != "" {
		if err := nonNegativeInt(sm.ActivationTarget); err != nil {
			errs = append(errs, fmt.Errorf("scalingModifiers activationTarget: %w", err))
		}
	}
	if sm.MetricType != "" && sm.MetricType != autoscalingv2.AverageValueMetricType {
		errs = append(errs, fmt.Errorf("scalingModifiers metricType %q: the lag is shared by the replicas, want AverageValue", sm.MetricType))
	}
	if maxR := ptrOr(so.Spec.MaxReplicaCount, 100); int(maxR) > g.Partitions {
		errs = append(errs, fmt.Errorf("maxReplicaCount %d: more than the %d partitions, the extra replicas would idle", maxR, g.Partitions))
	}
	return errs
}

func TestPartitionedScalingCheck(t *testing.T) {
	g := (bus.Topology{BotPartitions: 3}).BotGroup()
	build := func(edit func(so *scaledObject)) *scaledObject {
		so := &scaledObject{}
		maxR := int32(3)
		so.Spec.MaxReplicaCount = &maxR
		so.Spec.Advanced = &kedaAdvanced{ScalingModifiers: &kedaScalingModifiers{Formula: "p0 + p1 + p2", Target: "32", MetricType: autoscalingv2.AverageValueMetricType}}
		for p := range 3 {
			so.Spec.Triggers = append(so.Spec.Triggers, scaleTrigger{Type: "nats-jetstream", Name: fmt.Sprintf("p%d", p), Metadata: map[string]string{"consumer": g.Consumer(p)}})
		}
		if edit != nil {
			edit(so)
		}
		return so
	}
	tests := []struct {
		name string
		edit func(so *scaledObject)
		want string // in the first error; "" for none
	}{
		{"valid", nil, ""},
		{"a partition not read", func(so *scaledObject) {
			so.Spec.Triggers = so.Spec.Triggers[:2]
			so.Spec.Advanced.ScalingModifiers.Formula = "p0 + p1"
		}, "no trigger reads"},
		{"a partition read twice", func(so *scaledObject) { so.Spec.Triggers[2].Metadata["consumer"] = g.Consumer(1) }, "read twice"},
		{"formula misses one", func(so *scaledObject) { so.Spec.Advanced.ScalingModifiers.Formula = "p0 + p1" }, "sums 2 of 3"},
		{"formula is no sum", func(so *scaledObject) { so.Spec.Advanced.ScalingModifiers.Formula = "max(p0, p1, p2)" }, "is not one trigger's name"},
		{"no formula", func(so *scaledObject) { so.Spec.Advanced = nil }, "no scalingModifiers"},
		{"name the formula cannot use", func(so *scaledObject) { so.Spec.Triggers[0].Name = "p-0" }, "unique identifier"},
		{"bad target", func(so *scaledObject) { so.Spec.Advanced.ScalingModifiers.Target = "lots" }, "target"},
		{"value metric", func(so *scaledObject) { so.Spec.Advanced.ScalingModifiers.MetricType = autoscalingv2.ValueMetricType }, "AverageValue"},
		{"more replicas than partitions", func(so *scaledObject) { four := int32(4); so.Spec.MaxReplicaCount = &four }, "maxReplicaCount 4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			errs := checkPartitionedScaling(build(tt.edit), g)
			switch {
			case tt.want == "" && len(errs) > 0:
				t.Fatalf("errors %v, want none", errs)
			case tt.want != "" && (len(errs) == 0 || !strings.Contains(errs[0].Error(), tt.want)):
				t.Fatalf("errors %v, want one saying %q", errs, tt.want)
			}
		})
	}
}
