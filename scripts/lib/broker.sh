# shellcheck shell=bash
# Sourced library: make sure the things Warren's scripts need are there.
#
#   source scripts/lib/broker.sh
#   ensure_cargo     # cargo on PATH, or a clear message naming rustup
#   ensure_broker    # an AMQP broker reachable at $AMQP_URL (exported)
#   ensure_promtool  # best effort: promtool for the metrics tests
#   ensure_deploy_validators  # best effort: docker-compose, promtool and prometheus for the deployment tests
#   ensure_cargo_fuzz  # `cargo +nightly fuzz` usable (installing cargo-fuzz), or 1 saying what is missing
#   ensure_browser   # best effort: headless Chromium and chromedriver for the browser tests
#
# Every step taken is printed on stderr with a `==>` prefix. URLs are always
# printed through mask_url, so the AMQP password never reaches the terminal
# or a CI log.

# Default broker: the local node, user guest, vhost "/".
WARREN_DEFAULT_AMQP_URL='amqp://guest:guest@127.0.0.1:5672/%2f'

# Repository root: this file lives in <root>/scripts/lib/.
WARREN_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

_warren_apt_updated=0

# say MESSAGE...: one step, on stderr.
say() {
	printf '==> %s\n' "$*" >&2
}

# warn MESSAGE...: a problem that does not stop us, on stderr.
warn() {
	printf '==> warning: %s\n' "$*" >&2
}

# mask_url URL: print URL with the password (if any) replaced by ***.
#   amqp://guest:guest@127.0.0.1:5672/%2f -> amqp://guest:***@127.0.0.1:5672/%2f
# AMQP_URL may list a cluster's nodes separated by commas: each is masked.
# The credentials are taken to end at the LAST '@' of the URL, so a password
# with an unencoded '@', '/' or '?' is still hidden completely (at worst an odd
# vhost or query holding an '@' is hidden too; nothing secret is ever shown).
mask_url() {
	local one out='' sep='' parts=()
	IFS=, read -r -a parts <<<"$1"
	for one in "${parts[@]}"; do
		out+="$sep$(_warren_mask_one "$one")"
		sep=,
	done
	printf '%s\n' "$out"
}

_warren_mask_one() {
	local url=$1 scheme='' rest cred after
	if [[ $url == *://* ]]; then
		scheme="${url%%://*}://"
		rest=${url#*://}
	else
		rest=$url
	fi
	if [[ $rest == *@* ]]; then
		cred=${rest%@*}
		after=${rest##*@}
		if [[ $cred == *:* ]]; then
			rest="${cred%%:*}:***@${after}"
		fi
	fi
	printf '%s%s\n' "$scheme" "$rest"
}

# _warren_parse_url URL: set _warren_scheme, _warren_host and _warren_port.
# Follows the URL standard: the authority ends at the first '/', '?' or '#',
# the host and port follow its last '@'. IPv6 hosts are written [::1].
_warren_parse_url() {
	local url=$1 rest authority hostport
	_warren_scheme=amqp
	if [[ $url == *://* ]]; then
		_warren_scheme=${url%%://*}
		_warren_scheme=${_warren_scheme,,}
		rest=${url#*://}
	else
		rest=$url
	fi
	authority=${rest%%[/?#]*}
	hostport=${authority##*@}
	if [[ $hostport == \[* ]]; then
		_warren_host=${hostport#\[}
		_warren_host=${_warren_host%%\]*}
		_warren_port=${hostport#*\]}
		_warren_port=${_warren_port#:}
	elif [[ $hostport == *:* ]]; then
		_warren_host=${hostport%%:*}
		_warren_port=${hostport#*:}
	else
		_warren_host=$hostport
		_warren_port=''
	fi
	[[ -n $_warren_host ]] || _warren_host=localhost
	if [[ -z $_warren_port ]]; then
		if [[ $_warren_scheme == amqps ]]; then
			_warren_port=5671
		else
			_warren_port=5672
		fi
	fi
	if ! [[ $_warren_port =~ ^[0-9]+$ ]] || ((10#$_warren_port < 1 || 10#$_warren_port > 65535)); then
		printf '==> error: AMQP_URL %s has an invalid port %q\n' "$(mask_url "$url")" "$_warren_port" >&2
		return 1
	fi
}

# tcp_open HOST PORT: does something accept a TCP connection there (2 s max)?
# shellcheck disable=SC2016 # $1 and $2 are expanded by the inner bash
tcp_open() {
	local host=$1 port=$2
	if command -v timeout >/dev/null 2>&1; then
		timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$host" "$port" 2>/dev/null
	else
		bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$host" "$port" 2>/dev/null
	fi
}

# wait_for_port HOST PORT SECONDS: poll until the port answers; 1 on timeout.
wait_for_port() {
	local host=$1 port=$2 limit=$3 start=$SECONDS
	while ((SECONDS - start < limit)); do
		if tcp_open "$host" "$port"; then
			return 0
		fi
		sleep 1
	done
	tcp_open "$host" "$port"
}

_warren_is_root() {
	[[ $(id -u) -eq 0 ]]
}

# _warren_is_local HOST: can a broker started on this machine serve HOST?
_warren_is_local() {
	case $1 in
	localhost | 127.* | ::1 | 0:0:0:0:0:0:0:1 | "$(hostname 2>/dev/null)") return 0 ;;
	*) return 1 ;;
	esac
}

# _warren_rabbitmq_bin NAME: path of a RabbitMQ command, or 1 if absent.
# The /usr/sbin wrappers come first: as root they switch to the rabbitmq user,
# whose data directory and Erlang cookie the system node uses.
_warren_rabbitmq_bin() {
	local name=$1 p
	for p in "$(command -v "$name" 2>/dev/null)" "/usr/sbin/$name" "/usr/lib/rabbitmq/bin/$name"; do
		if [[ -n $p && -x $p ]]; then
			printf '%s\n' "$p"
			return 0
		fi
	done
	return 1
}

# How apt-get is run: as is (root), or behind `sudo -n` (see _warren_can_sudo_apt).
_warren_apt_sudo=()

_warren_apt_get() {
	local shown=${_warren_apt_sudo[*]:+"${_warren_apt_sudo[*]} "}
	local run=(${_warren_apt_sudo[@]+"${_warren_apt_sudo[@]}"} env DEBIAN_FRONTEND=noninteractive apt-get)
	if ((!_warren_apt_updated)); then
		say "${shown}apt-get update"
		"${run[@]}" update >&2 || return 1
		_warren_apt_updated=1
	fi
	say "${shown}apt-get install -y $*"
	"${run[@]}" install -y "$@" >&2
}

_warren_can_apt() {
	_warren_is_root && [[ -f /etc/debian_version ]] && command -v apt-get >/dev/null 2>&1
}

# _warren_can_sudo_apt: not root, but on Debian with a sudo that runs apt-get without
# asking for a password (`sudo -n` never prompts: a script must not hang on one). Sets
# _warren_apt_sudo for _warren_apt_get.
_warren_can_sudo_apt() {
	if [[ -f /etc/debian_version ]] && command -v apt-get >/dev/null 2>&1 &&
		command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
		_warren_apt_sudo=(sudo -n)
		return 0
	fi
	return 1
}

# _warren_start_rabbitmq HOST PORT: start the local node and wait for it.
_warren_start_rabbitmq() {
	local host=$1 port=$2 server ctl
	server=$(_warren_rabbitmq_bin rabbitmq-server) || return 1
	say "starting RabbitMQ: $server -detached"
	if ! "$server" -detached >&2; then
		# It may already be booting; the port tells.
		warn "$server -detached failed; waiting for the port anyway"
	fi
	say "waiting up to 60 s for $host:$port"
	if ! wait_for_port "$host" "$port" 60; then
		printf '==> error: RabbitMQ was started but %s:%s did not answer within 60 s.\n' "$host" "$port" >&2
		printf '    Look at its logs in /var/log/rabbitmq/. Not root? Try: sudo %s -detached\n' "$server" >&2
		return 1
	fi
	if ctl=$(_warren_rabbitmq_bin rabbitmqctl); then
		say "$ctl await_startup"
		if command -v timeout >/dev/null 2>&1; then
			timeout 90 "$ctl" await_startup >&2 || warn "rabbitmqctl await_startup failed; the port answers, going on"
		else
			"$ctl" await_startup >&2 || warn "rabbitmqctl await_startup failed; the port answers, going on"
		fi
	fi
	say "RabbitMQ is up on $host:$port"
}

# _warren_compose: print the compose command that works here (with a running
# Docker engine), or return 1.
_warren_compose() {
	command -v docker >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1 || return 1
	if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1 &&
		docker info >/dev/null 2>&1; then
		printf 'docker compose\n'
		return 0
	fi
	# Compose v1 (Debian's docker-compose package) also talks to the engine.
	if command -v docker-compose >/dev/null 2>&1 && docker-compose version >/dev/null 2>&1 &&
		command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
		printf 'docker-compose\n'
		return 0
	fi
	return 1
}

# ensure_broker: make sure an AMQP broker answers at $AMQP_URL (default: the
# local node), starting or installing one when it is local. AMQP_URL may list
# several nodes separated by commas; one answering is enough. Exports AMQP_URL.
ensure_broker() {
	export AMQP_URL="${AMQP_URL:-$WARREN_DEFAULT_AMQP_URL}"
	local masked compose url urls=() host='' port=''
	masked=$(mask_url "$AMQP_URL")
	IFS=, read -r -a urls <<<"$AMQP_URL"
	if ((${#urls[@]} == 0)); then
		printf '==> error: AMQP_URL is empty\n' >&2
		return 1
	fi

	say "checking for an AMQP broker at $masked"
	for url in "${urls[@]}"; do
		_warren_parse_url "$url" || return 1
		if tcp_open "$_warren_host" "$_warren_port"; then
			say "broker is reachable at $(mask_url "$url")"
			return 0
		fi
		say "nothing answers on $_warren_host:$_warren_port"
		# The first local plain-amqp node on 5672 is one we can start.
		if [[ -z $host && $_warren_scheme == amqp && $_warren_port == 5672 ]] &&
			_warren_is_local "$_warren_host"; then
			host=$_warren_host port=$_warren_port
		fi
	done

	if [[ -z $host ]]; then
		printf '==> error: no broker answers at %s, and a broker started by this\n' "$masked" >&2
		printf '    script could only serve plain amqp on this machine, port 5672. Start that\n' >&2
		printf '    broker yourself, or unset AMQP_URL to use a local one (%s).\n' "$(mask_url "$WARREN_DEFAULT_AMQP_URL")" >&2
		return 1
	fi

	# (b) RabbitMQ installed: start it.
	if _warren_rabbitmq_bin rabbitmq-server >/dev/null; then
		say "rabbitmq-server is installed"
		_warren_start_rabbitmq "$host" "$port"
		return
	fi

	# (c) root on Debian/Ubuntu: install it, then start it.
	if _warren_can_apt; then
		say "rabbitmq-server is not installed; installing it with apt-get"
		if _warren_apt_get rabbitmq-server; then
			# Where init systems run, the package starts the node itself.
			if tcp_open "$host" "$port"; then
				say "broker is reachable at $masked"
				return 0
			fi
			_warren_start_rabbitmq "$host" "$port"
			return
		fi
		warn "apt-get install rabbitmq-server failed"
	fi

	# (d) Docker with a running engine: the compose service.
	if compose=$(_warren_compose); then
		say "starting the rabbitmq service: $compose -f $WARREN_ROOT/docker-compose.yml up -d rabbitmq"
		# shellcheck disable=SC2086 # $compose is "docker compose" or "docker-compose"
		if $compose -f "$WARREN_ROOT/docker-compose.yml" up -d rabbitmq >&2; then
			say "waiting up to 90 s for $host:$port"
			if wait_for_port "$host" "$port" 90; then
				say "broker is reachable at $masked"
				return 0
			fi
			printf '==> error: the rabbitmq container did not answer on %s:%s within 90 s;\n' "$host" "$port" >&2
			printf '    see: %s -f %s/docker-compose.yml logs rabbitmq\n' "$compose" "$WARREN_ROOT" >&2
			return 1
		fi
		warn "$compose up -d rabbitmq failed"
	fi

	# (e) Nothing we can do here: say what would work.
	cat >&2 <<EOF
==> error: no AMQP broker answers at $masked and none could be started here.
    Do one of these, then run this script again:
      - on Debian/Ubuntu, as root:
            apt-get update && apt-get install -y rabbitmq-server
            rabbitmq-server -detached
      - with Docker (engine running), from $WARREN_ROOT:
            docker compose up -d rabbitmq
      - or point AMQP_URL at a broker you can reach, e.g.
            export AMQP_URL='amqp://USER:PASSWORD@HOST:5672/%2f'
EOF
	return 1
}

# ensure_promtool: best effort; installs Debian's prometheus package (which
# ships promtool) when we are root with apt-get. Never fails.
ensure_promtool() {
	if command -v promtool >/dev/null 2>&1; then
		say "promtool: $(command -v promtool)"
		return 0
	fi
	if _warren_can_apt; then
		say "promtool is missing; installing Debian's prometheus package for it"
		if _warren_apt_get --no-install-recommends prometheus && command -v promtool >/dev/null 2>&1; then
			say "promtool: $(command -v promtool)"
			return 0
		fi
		warn "could not install promtool; tests that use it may skip or fail"
		return 0
	fi
	warn "promtool is missing (it comes with Debian's prometheus package); tests that use it may skip or fail"
	return 0
}

# ensure_deploy_validators: best effort; the offline validators of the
# deployment files: Debian's docker-compose (v1, `docker-compose config` needs
# no engine) and promtool and the prometheus server (Debian's prometheus
# package; cli/tests/suite/prometheus_server.rs runs the server), installed with
# apt-get when we are root on Debian. Never fails: a test whose tool is missing
# skips, or fails under CI (tests/src/skip.rs). (The Kubernetes validators are
# installed by the tests themselves, into a virtualenv under target/.)
ensure_deploy_validators() {
	local missing=()
	command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
	{ command -v promtool && command -v prometheus; } >/dev/null 2>&1 || missing+=(prometheus)
	if ((${#missing[@]} == 0)); then
		say "deployment validators: $(command -v docker-compose), $(command -v promtool), $(command -v prometheus)"
		return 0
	fi
	if _warren_can_apt; then
		say "installing the deployment validators: ${missing[*]}"
		_warren_apt_get --no-install-recommends "${missing[@]}" ||
			warn "could not install ${missing[*]}; the deployment tests that need them will skip (fail under CI)"
		return 0
	fi
	warn "missing ${missing[*]} (Debian packages); the deployment tests that need them will skip (fail under CI)"
	return 0
}

# ensure_cargo_fuzz: can the fuzz targets (fuzz/) run? They need a nightly toolchain
# (`cargo +nightly`, through rustup) and cargo-fuzz, which is installed with cargo when only
# it is missing. Returns 1, saying exactly what is missing, when they cannot.
ensure_cargo_fuzz() {
	if ! cargo +nightly --version >/dev/null 2>&1; then
		warn "no nightly toolchain (\`cargo +nightly --version\` fails): install one with \`rustup toolchain install nightly\`"
		return 1
	fi
	if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
		say "cargo-fuzz is missing; installing it: cargo install cargo-fuzz --locked"
		if ! cargo install cargo-fuzz --locked >&2; then
			warn "could not install cargo-fuzz: install it with \`cargo install cargo-fuzz --locked\`"
			return 1
		fi
	fi
	say "cargo-fuzz: $(cargo +nightly fuzz --version 2>/dev/null), $(cargo +nightly --version 2>/dev/null)"
}

# _warren_browser_missing: print the Debian package of each browser program not installed:
# Chromium, and its WebDriver server chromedriver (package chromium-driver).
_warren_browser_missing() {
	command -v chromium >/dev/null 2>&1 || printf 'chromium\n'
	command -v chromedriver >/dev/null 2>&1 || printf 'chromium-driver\n'
}

# ensure_browser: best effort; headless Chromium and chromedriver for the browser tests
# (tests/src/browser.rs), Debian's chromium and chromium-driver, installed with apt-get as
# root or through a sudo that asks no password (with fonts-liberation, which chromium only
# recommends: screenshots need real fonts). Quick when both are there (two `command -v`).
# Never fails: otherwise it prints the command to run, and the browser tests skip (fail
# under CI, tests/src/skip.rs).
ensure_browser() {
	local missing=()
	mapfile -t missing < <(_warren_browser_missing)
	if ((${#missing[@]} == 0)); then
		say "browser: $(command -v chromium), $(command -v chromedriver)"
		return 0
	fi
	if _warren_can_apt || _warren_can_sudo_apt; then
		say "installing the browser for the browser tests: ${missing[*]}"
		if _warren_apt_get --no-install-recommends "${missing[@]}" fonts-liberation &&
			[[ -z $(_warren_browser_missing) ]]; then
			say "browser: $(command -v chromium), $(command -v chromedriver)"
		else
			warn "could not install ${missing[*]}; the browser tests will skip (fail under CI)"
		fi
		_warren_apt_sudo=()
		return 0
	fi
	warn "missing ${missing[*]}: the browser tests will skip (fail under CI). To install:"
	if [[ -f /etc/debian_version ]]; then
		printf '        sudo apt-get update && sudo apt-get install -y --no-install-recommends %s fonts-liberation\n' \
			"${missing[*]}" >&2
	else
		printf '        Chromium and its chromedriver from your system (on Debian: %s)\n' "${missing[*]}" >&2
	fi
	return 0
}

# ensure_cargo: cargo must be there; fails with a message naming rustup.
ensure_cargo() {
	if ! command -v cargo >/dev/null 2>&1 && [[ -x ${CARGO_HOME:-${HOME:-/root}/.cargo}/bin/cargo ]]; then
		export PATH="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin:$PATH"
	fi
	if ! command -v cargo >/dev/null 2>&1; then
		cat >&2 <<'EOF'
==> error: cargo was not found. Install the Rust toolchain with rustup
    (https://rustup.rs):
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh
    then open a new shell (or `source "$HOME/.cargo/env"`) and run this again.
EOF
		return 1
	fi
	say "cargo: $(cargo --version 2>/dev/null || command -v cargo)"
}
