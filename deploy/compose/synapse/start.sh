#!/bin/sh
# Entry point of the compose Synapse. The image's start script runs an
# existing configuration but creates no signing key; create it once, give
# /data to the synapse user (991), then hand over to the image's script,
# which drops root. Not recursive: the registration file mounted read-only
# inside /data must not be touched.
set -eu
config=/config/homeserver.yaml
if [ ! -s /data/signing.key ]; then
    python -m synapse.app.homeserver --config-path "$config" --generate-keys
fi
mkdir -p /data/media_store
chown 991:991 /data /data/signing.key /data/media_store
exec /start.py run --config-path "$config"
