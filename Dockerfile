# walhook: a static binary on a small base image.
FROM golang:1.26.0-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.Version=${VERSION}" -o /out/walhook ./cmd/walhook

FROM debian:12.8-slim
# CA certificates: https:// webhooks (and sslmode=verify-full DSNs) are
# verified against them; the slim image ships none. A private CA: mount its
# PEM file and point SSL_CERT_FILE (or SSL_CERT_DIR) at it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 walhook \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin walhook
COPY --from=build /out/walhook /usr/local/bin/walhook
COPY testdata/auction-excellence/walhook.yaml /etc/walhook/walhook.yaml
# Numeric, so Kubernetes' runAsNonRoot can verify it. walhook writes no
# file (readOnlyRootFilesystem: true works; logs go to stderr).
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/walhook"]
CMD ["run", "--config", "/etc/walhook/walhook.yaml"]
