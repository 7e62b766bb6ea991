# docker-mirror: a static binary on a distroless base, run as non-root.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# VERSION (e.g. --build-arg VERSION=v1.2.3) is what `docker-mirror version`
# prints; empty, the commit of the build context's git clone is shown.
ARG VERSION=
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/docker-mirror ./cmd/docker-mirror \
 && mkdir -p /out/data

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/docker-mirror /usr/local/bin/docker-mirror
COPY --from=build --chown=65532:65532 /out/data /data
USER 65532:65532
EXPOSE 5000
VOLUME /data
ENTRYPOINT ["/usr/local/bin/docker-mirror"]
CMD ["serve", "--listen", ":5000", "--data", "/data"]
