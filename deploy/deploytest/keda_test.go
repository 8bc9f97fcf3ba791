package deploytest

import (
	"fmt"
	"sort"
	"strconv"

	autoscalingv2 "k8s.io/api/autoscaling/v2"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
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
	RestoreToOriginalReplicaCount bool `json:"restoreToOriginalReplicaCount,omitempty"`
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
