# Warren's container image: both binaries, warren-worker (the default command) and
# warren-producer.
#
#   docker build -t warren .
#   docker run --rm -e AMQP_URL=amqp://USER:PASSWORD@HOST:5672/%2f warren
#   docker run --rm -e AMQP_URL=... warren warren-producer publish --task demo.noop
#
# There is no ENTRYPOINT: the command names the binary, so the producer (or
# `warren-worker --help`) is one argument away. Flags can also be set with the
# WARREN_* environment variables listed by `warren-worker --help`.
#
# Plain `docker build` works (no BuildKit-only syntax), so `docker-compose` v1
# builds it too.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---------------------------------------------------------------------------
# Skeleton: every Cargo.toml and the lock file, with an empty stand-in for each
# crate root that exists (and for each target path a manifest names). It is
# rebuilt whenever any source changes, but its output only changes with the
# manifests, so the dependency layer below stays cached across code changes.
# Found with `find`, so a new workspace member needs no edit here.
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS skeleton
WORKDIR /src
COPY . .
RUN set -eu; \
    mkdir /skeleton; \
    find . -path ./target -prune -o \( -name Cargo.toml -o -name Cargo.lock \) -print | \
    while read -r manifest; do \
        install -D -m 0644 "$manifest" "/skeleton/$manifest"; \
        [ "$(basename "$manifest")" = Cargo.toml ] || continue; \
        dir=$(dirname "$manifest"); \
        for root in $(sed -n 's/^[[:space:]]*path[[:space:]]*=[[:space:]]*"\([^"]*\.rs\)".*/\1/p' "$manifest") \
                    src/lib.rs src/main.rs; do \
            if [ -f "$dir/$root" ]; then \
                mkdir -p "$(dirname "/skeleton/$dir/$root")"; \
                echo 'fn main() {}' > "/skeleton/$dir/$root"; \
            fi; \
        done; \
    done

# ---------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder
WORKDIR /src

# Dependency layer: the crates.io dependencies, built against the skeleton and
# kept until a Cargo.toml or Cargo.lock changes.
COPY --from=skeleton /skeleton/ ./
RUN cargo build --release --locked -p warren-worker -p warren-producer

# The real sources. COPY keeps the files' old modification times, so they are
# touched to be newer than the skeleton's build: cargo then rebuilds Warren's
# own crates, and only those.
COPY . .
RUN set -eux; \
    find . -path ./target -prune -o -name '*.rs' -exec touch {} +; \
    cargo build --release --locked -p warren-worker -p warren-producer; \
    install -D -m 0755 target/release/warren-worker /out/warren-worker; \
    install -D -m 0755 target/release/warren-producer /out/warren-producer

# ---------------------------------------------------------------------------
# Runtime: the same Debian release as the builder (same glibc). ca-certificates
# for amqps:// brokers (the system's roots are trusted). bash, grep and head are
# already there for the compose healthchecks (an HTTP GET over /dev/tcp), so no
# curl is needed.
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --system --gid 10001 warren; \
    useradd --system --uid 10001 --gid warren --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin warren

COPY --from=builder /out/warren-worker /out/warren-producer /usr/local/bin/

# Logs as JSON lines for collectors; the worker's admin server (/metrics,
# /healthz, /readyz) on all interfaces of the container.
ENV WARREN_LOG_FORMAT=json \
    WARREN_ADMIN_ADDR=0.0.0.0:9090

# Numeric user, so Kubernetes' runAsNonRoot can check it without /etc/passwd.
USER 10001:10001

# 9090: the worker's admin server. 8080: `warren-producer serve` (HTTP ingest).
EXPOSE 9090 8080

# The worker drains on SIGTERM (Docker's default stop signal): give it longer
# than WARREN_SHUTDOWN_TIMEOUT (default 30s) with `docker stop -t` or the
# orchestrator's grace period.
STOPSIGNAL SIGTERM

CMD ["warren-worker"]
