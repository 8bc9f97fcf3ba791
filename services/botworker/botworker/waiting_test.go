package botworker

import (
	"testing"

	"github.com/cactus-comments/appservice/pkg/service/servicetest"
)

// TestAdminAnswersWhileWaitingForNATS: started before NATS, the botworker is
// alive, says it waits for NATS and can be scraped.
func TestAdminAnswersWhileWaitingForNATS(t *testing.T) {
	servicetest.AdminWhileWaitingForNATS(t, testConfig(t, "nats://127.0.0.1:1", nil), Run)
}

func TestAdminPortTakenFailsAtOnce(t *testing.T) {
	servicetest.AdminPortTaken(t, testConfig(t, "nats://127.0.0.1:1", nil), Run)
}
