package gateway

import (
	"testing"

	"github.com/cactus-comments/appservice/pkg/service/servicetest"
)

// TestAdminAnswersWhileWaitingForNATS: started before NATS, the gateway is
// alive, says it waits for NATS and can be scraped.
func TestAdminAnswersWhileWaitingForNATS(t *testing.T) {
	servicetest.AdminWhileWaitingForNATS(t, testConfig(t), Run)
}

func TestAdminPortTakenFailsAtOnce(t *testing.T) {
	servicetest.AdminPortTaken(t, testConfig(t), Run)
}
