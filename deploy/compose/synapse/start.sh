#!/bin/sh
# Entry point of the compose Synapse, run as root before the image's own
# start script drops to the synapse user (991):
#  - the image runs an existing configuration but creates no signing key:
#    create it on first start;
#  - the registration on the host is private to its owner (0600): copy it
#    into /data for the synapse user on every start, so a regenerated
#    registration is picked up by a restart;
#  - give /data to the synapse user (not recursively: only what is ours).
set -eu
config=/config/homeserver.yaml
install -o 991 -g 991 -m 600 /registration/cactus-registration.yaml /data/cactus-registration.yaml
if [ ! -s /data/signing.key ]; then
    # /config is read-only: anything generated without an explicit path
    # goes to /data.
    python -m synapse.app.homeserver --config-path "$config" --keys-directory /data --generate-keys
fi
mkdir -p /data/media_store
chown 991:991 /data /data/signing.key /data/media_store
exec /start.py run --config-path "$config"
