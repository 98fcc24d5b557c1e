# Warren's container image: the three binaries, warren-worker (the default
# command), warren-producer and warren-scheduler.
#
#   docker build -t warren .
#   docker run --rm -e AMQP_URL=amqp://USER:PASSWORD@HOST:5672/%2f warren
#   docker run --rm -e AMQP_URL=... warren warren-producer publish --task demo.noop
#   docker run --rm -e AMQP_URL=... -v $PWD/schedule.toml:/etc/warren/schedule.toml:ro \
#       warren warren-scheduler --schedule /etc/warren/schedule.toml
#
# There is no ENTRYPOINT: the command names the binary, so the producer, the
# scheduler (or `warren-worker --help`) is one argument away. Flags can also be
# set with the WARREN_* environment variables each binary's --help lists.
#
# The binaries are built by name, not by package, so moving one to another
# workspace member needs no edit here.
#
# The root Cargo.toml builds releases with `debug = 1` (for profiling); the
# image ships the binaries without their debug info (about 13 MB each instead
# of 85-93 MB). The debug info stays in the builder stage, under /out/debug,
# one file per binary, which gdb and perf find through the binaries'
# .gnu_debuglink section:
#   docker build --target builder -t warren-builder .
#   docker run --rm warren-builder cat /out/debug/warren-worker.debug > warren-worker.debug
#
# Plain `docker build` works (no BuildKit-only syntax), so `docker-compose` v1
# builds it too.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---------------------------------------------------------------------------
# Skeleton: every Cargo.toml and the lock file, with an empty stand-in for each
# crate root that exists (src/lib.rs, src/main.rs, src/bin/*.rs,
# src/bin/*/main.rs, and each target path a manifest names). It is
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
                    src/lib.rs src/main.rs \
                    $(cd "$dir" && ls -d src/bin/*.rs src/bin/*/main.rs 2>/dev/null); do \
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
RUN cargo build --release --locked --bin warren-worker --bin warren-producer --bin warren-scheduler

# The real sources. COPY keeps the files' old modification times, so they are
# touched to be newer than the skeleton's build: cargo then rebuilds Warren's
# own crates, and only those.
#
# Each binary's debug info is copied to /out/debug/BINARY.debug and removed
# from the binary that ships (objcopy is binutils, which the image's gcc
# brings). --strip-debug keeps the symbol table, so a panic's backtrace
# (RUST_BACKTRACE=1) still names its functions.
COPY . .
RUN set -eux; \
    find . -path ./target -prune -o -name '*.rs' -exec touch {} +; \
    cargo build --release --locked --bin warren-worker --bin warren-producer --bin warren-scheduler; \
    mkdir -p /out/debug; \
    for bin in warren-worker warren-producer warren-scheduler; do \
        objcopy --only-keep-debug "target/release/$bin" "/out/debug/$bin.debug"; \
        objcopy --strip-debug --add-gnu-debuglink="/out/debug/$bin.debug" \
            "target/release/$bin" "/out/$bin"; \
        chmod 0755 "/out/$bin"; \
    done

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

COPY --from=builder /out/warren-worker /out/warren-producer /out/warren-scheduler /usr/local/bin/

# Logs as JSON lines for collectors; the admin server (/metrics, /healthz,
# /readyz) on all interfaces of the container. WARREN_ADMIN_ADDR is read by the
# worker and the scheduler alike: docker-compose.yml and the Kubernetes
# manifests give the scheduler 0.0.0.0:9092, its own default.
ENV WARREN_LOG_FORMAT=json \
    WARREN_ADMIN_ADDR=0.0.0.0:9090

# Numeric user, so Kubernetes' runAsNonRoot can check it without /etc/passwd.
USER 10001:10001

# 9090: the worker's admin server. 9092: the scheduler's. 8080: `warren-producer
# serve` (HTTP ingest).
EXPOSE 9090 9092 8080

# The worker drains on SIGTERM (Docker's default stop signal): give it longer
# than WARREN_SHUTDOWN_TIMEOUT (default 30s) with `docker stop -t` or the
# orchestrator's grace period.
STOPSIGNAL SIGTERM

CMD ["warren-worker"]
