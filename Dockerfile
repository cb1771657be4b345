# syntax=docker/dockerfile:1
# portico's container image: built with the Rust image, run on distroless
# (glibc, libgcc, CA certificates for upstream TLS and JWKS fetches; no shell).
#   docker build -t portico:0.1.0 .
#   docker run --rm -p 8080:8080 -p 9902:9902 portico:0.1.0
# Health: the image has no curl or shell; `portico probe` GETs /health of
# the admin API itself (exit 0 on 2xx). Kubernetes probes over HTTP on
# admin.public_bind instead (deploy/kubernetes/deployment.yaml).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin portico \
    && install -D -m 0755 target/release/portico /out/usr/bin/portico \
    && install -D -m 0644 deploy/container/proxy.toml /out/etc/portico/proxy.toml \
    && /out/usr/bin/portico check --config /out/etc/portico/proxy.toml

# cc-debian12 matches the glibc of rust:1-bookworm. :nonroot runs as uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/usr/bin/portico /usr/bin/portico
COPY --from=build /out/etc/portico/proxy.toml /etc/portico/proxy.toml
USER 65532:65532
ENV PORTICO_CONFIG=/etc/portico/proxy.toml
# 8080: the listener; 9902: the read-only /health, /ready, /metrics.
EXPOSE 8080/tcp 9902/tcp
STOPSIGNAL SIGTERM
# admin.public_bind of deploy/container/proxy.toml; a config of your own
# with another admin address needs its own HEALTHCHECK line.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["/usr/bin/portico", "probe", "127.0.0.1:9902", "--path", "/health"]
ENTRYPOINT ["/usr/bin/portico"]
