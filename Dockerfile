# walhook: a static binary on a small base image.
FROM golang:1.26.0-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.Version=${VERSION}" -o /out/walhook ./cmd/walhook

FROM debian:12.8-slim
RUN useradd --system --uid 10001 --no-create-home walhook
COPY --from=build /out/walhook /usr/local/bin/walhook
COPY testdata/auction-excellence/walhook.yaml /etc/walhook/walhook.yaml
USER 10001
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/walhook"]
CMD ["run", "--config", "/etc/walhook/walhook.yaml"]
