# syntax=docker/dockerfile:1

# One image per binary, from this one file:
#
#   docker build --build-arg SERVICE=gateway     -t cactus-gateway:dev .
#   docker build --build-arg SERVICE=provisioner -t cactus-provisioner:dev .
#   docker build --build-arg SERVICE=botworker   -t cactus-botworker:dev .
#   docker build --build-arg SERVICE=cactusctl   -t cactus-cactusctl:dev .
#
# The result is a static binary on a distroless base: no shell, no package
# manager, no libc, running as uid/gid 65532. The services are configured only
# through CACTUS_* environment variables (run one with -h to list them).
# deploy/deploytest checks the facts this file must keep.

ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
ARG TARGETOS
ARG TARGETARCH
WORKDIR /src
ENV CGO_ENABLED=0 \
    GOFLAGS=-buildvcs=false

# The workspace file and every module's go.mod/go.sum come first so that the
# dependency download is cached until one of them changes. go refuses a
# workspace whose `use` directories are missing, so every module named in
# go.work is copied here, including ones this image does not build.
COPY go.work go.work.sum ./
COPY pkg/go.mod pkg/go.sum pkg/
COPY cmd/go.* cmd/
COPY e2e/go.* e2e/
COPY services/gateway/go.* services/gateway/
COPY services/provisioner/go.* services/provisioner/
COPY services/botworker/go.* services/botworker/
COPY deploy/deploytest/go.* deploy/deploytest/
COPY tools/gatewaybench/go.* tools/gatewaybench/
# pkg requires every third-party module the binaries use.
RUN --mount=type=cache,target=/go/pkg/mod \
    cd pkg && GOWORK=off go mod download

COPY pkg/ pkg/
COPY cmd/ cmd/
COPY services/ services/

ARG SERVICE=gateway
# What `cactus-<service> --version` and cactus_build_info say; `make images`
# passes the git describe and the commit.
ARG VERSION=dev
ARG REVISION=unknown
RUN --mount=type=cache,target=/go/pkg/mod \
    --mount=type=cache,target=/root/.cache/go-build \
    case "$SERVICE" in \
      gateway|provisioner|botworker) pkgpath=./services/$SERVICE ;; \
      cactusctl) pkgpath=./cmd/cactusctl ;; \
      *) echo "unknown SERVICE '$SERVICE': want gateway, provisioner, botworker or cactusctl" >&2; exit 1 ;; \
    esac && \
    GOOS=$TARGETOS GOARCH=$TARGETARCH \
      go build -trimpath -ldflags="-s -w -X github.com/cactus-comments/appservice/pkg/buildinfo.version=${VERSION} -X github.com/cactus-comments/appservice/pkg/buildinfo.revision=${REVISION}" -o /out/app "$pkgpath"

# distroless/static: CA certificates (https homeservers), tzdata and a
# passwd entry for 65532, nothing else.
FROM gcr.io/distroless/static:nonroot
ARG SERVICE=gateway
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.title="cactus-${SERVICE}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.description="Cactus Comments appservice: ${SERVICE}" \
      org.opencontainers.image.source="https://github.com/cactus-comments/appservice"
COPY --from=build /out/app /app
USER 65532:65532
# 8080: the gateway's Application Service API (CACTUS_LISTEN_ADDR).
# 9090: every service's /livez, /readyz and /metrics (CACTUS_ADMIN_ADDR).
EXPOSE 8080 9090
ENTRYPOINT ["/app"]
