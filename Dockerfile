# syntax=docker/dockerfile:1.7
#
# nimgate container image.
#
#   DOCKER_BUILDKIT=1 docker build -t nimgate:dev .
#   docker run --read-only -p 8080:8080 -p 9090:9090 \
#     -v "$PWD/nimgate.toml:/etc/nimgate/nimgate.toml:ro" nimgate:dev
#
# - Stage 1 builds the release binary; BuildKit cache mounts keep the crate registry and the
#   compiled dependencies in target/ between builds, so a source-only change rebuilds only
#   nimgate itself (the cache mounts are not layers: nothing of them lands in the image).
# - Stage 2 is distroless (glibc + CA certificates, no shell, no package manager) and runs as
#   the image's built-in non-root user 65532. The binary is root-owned and read-only; the
#   process writes nothing to the filesystem (audit goes to stdout with `[audit] path = "-"`),
#   so the image runs with a read-only root filesystem.
#
# Health: no HEALTHCHECK. Distroless has no shell or curl to run one, and Kubernetes ignores
# HEALTHCHECK anyway: deploy/kubernetes probes the admin port instead, GET /healthz (liveness)
# and GET /readyz (readiness) on :9090. Under plain Docker/compose, probe those from outside.

FROM rust:1.95-slim-bookworm AS builder
WORKDIR /build
# The context is an allow-list (.dockerignore): Cargo manifests, src/, benches/, tests/.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/build/target,sharing=locked \
    cargo build --release --locked --no-default-features --bin nimgate \
    && install -D -m 0555 target/release/nimgate /out/nimgate

FROM gcr.io/distroless/cc-debian12:nonroot
# checkov:skip=CKV_DOCKER_2: distroless has no shell/curl for a HEALTHCHECK and Kubernetes ignores it; probes are httpGet /healthz and /readyz on :9090 (deploy/kubernetes)
LABEL org.opencontainers.image.title="nimgate" \
      org.opencontainers.image.description="Authenticating reverse proxy that keeps the NVIDIA NIM API key out of environment variables" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/nimgate /usr/local/bin/nimgate
USER 65532:65532
# 8080: client listener; 9090: admin (/healthz, /readyz, /metrics).
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/nimgate"]
CMD ["serve", "--config", "/etc/nimgate/nimgate.toml"]
