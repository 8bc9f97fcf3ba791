package provisioner

import (
	"testing"

	"github.com/cactus-comments/appservice/pkg/config"
	"github.com/cactus-comments/appservice/pkg/service/servicetest"
)

// TestAdminAnswersWhileWaitingForNATS: started before NATS, the
// provisioner is alive, says it waits for NATS and can be scraped.
func TestAdminAnswersWhileWaitingForNATS(t *testing.T) {
	servicetest.AdminWhileWaitingForNATS(t, testRunConfig(t), Run)
}

func TestAdminPortTakenFailsAtOnce(t *testing.T) {
	servicetest.AdminPortTaken(t, testRunConfig(t), Run)
}

func testRunConfig(t *testing.T) *config.Config {
	t.Helper()
	env := map[string]string{
		"CACTUS_HS_TOKEN": "hs-token-for-provisioner-run-test-0123456789", "CACTUS_AS_TOKEN": "as-token-for-provisioner-run-test-0123456789",
		"CACTUS_HOMESERVER_URL": "http://127.0.0.1:9", "CACTUS_USER_ID": "@cactusbot:example.org",
		"CACTUS_LOG_LEVEL": "error", "CACTUS_SHUTDOWN_TIMEOUT": "5s",
	}
	cfg, err := config.LoadFrom(func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}
