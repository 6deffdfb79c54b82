#!/usr/bin/env bash
# Install orbitfl on a Raspberry Pi, a Jetson or a ground server (Debian,
# Raspberry Pi OS, Ubuntu / JetPack): a virtual environment with the compiled
# kernels, a CURVE key pair, a config file and a systemd unit.
#
#   sudo deploy/install.sh agent  --id sat-001 --endpoint tcp://GROUND:5555 \
#        --server-key ground.key [--data shard.npz]
#   sudo deploy/install.sh ground [--bind tcp://0.0.0.0:5555]
#
# Options (all optional unless shown above):
#   --source DIR|SDIST   the orbitfl source tree or sdist (default: this repo)
#   --prefix DIR         install root (default /opt/orbitfl)
#   --etc DIR            config and keys (default /etc/orbitfl)
#   --state DIR          state directory (default /var/lib/orbitfl)
#   --wheels DIR         install Python packages offline from DIR
#   --python PY          the interpreter for the venv (default python3)
#   --user NAME          system user to run as (default orbitfl)
#   --no-apt             do not apt-get install the build tools
#   --no-systemd         do not install or start the systemd unit
#
# Safe to run again: keys and configs that exist are kept, the venv and the
# package are upgraded in place.
set -euo pipefail

ROLE="${1:-}"
case "$ROLE" in
    agent|ground) shift ;;
    *) echo "usage: $0 agent|ground [options]; see the top of $0" >&2; exit 2 ;;
esac

HERE="$(cd "$(dirname "$0")" && pwd)"
SOURCE="$(dirname "$HERE")"
PREFIX=/opt/orbitfl
ETC=/etc/orbitfl
STATE=/var/lib/orbitfl
WHEELS=""
PY=python3
RUN_USER=orbitfl
APT=1
SYSTEMD=1
ID=""
ENDPOINT=""
SERVER_KEY=""
DATA=""
BIND="tcp://0.0.0.0:5555"

while [ $# -gt 0 ]; do
    case "$1" in
        --source) SOURCE="$2"; shift 2 ;;
        --prefix) PREFIX="$2"; shift 2 ;;
        --etc) ETC="$2"; shift 2 ;;
        --state) STATE="$2"; shift 2 ;;
        --wheels) WHEELS="$2"; shift 2 ;;
        --python) PY="$2"; shift 2 ;;
        --user) RUN_USER="$2"; shift 2 ;;
        --no-apt) APT=0; shift ;;
        --no-systemd) SYSTEMD=0; shift ;;
        --id) ID="$2"; shift 2 ;;
        --endpoint) ENDPOINT="$2"; shift 2 ;;
        --server-key) SERVER_KEY="$2"; shift 2 ;;
        --data) DATA="$2"; shift 2 ;;
        --bind) BIND="$2"; shift 2 ;;
        *) echo "unknown option $1; see the top of $0" >&2; exit 2 ;;
    esac
done

say() { printf '[orbitfl install] %s\n' "$*"; }
die() { printf '[orbitfl install] ERROR: %s\n' "$*" >&2; exit 1; }

if [ "$ROLE" = agent ]; then
    problems=()
    [ -n "$ID" ] || problems+=("--id is required (e.g. --id sat-001)")
    [ -n "$ENDPOINT" ] || problems+=("--endpoint is required (e.g. tcp://10.0.0.1:5555)")
    [ -n "$SERVER_KEY" ] || problems+=("--server-key is required: the ground's public \
.key file, made by 'deploy/install.sh ground' in $ETC/keys/ground.key there")
    [ -z "$SERVER_KEY" ] || [ -f "$SERVER_KEY" ] \
        || problems+=("--server-key $SERVER_KEY does not exist")
    if [ ${#problems[@]} -gt 0 ]; then
        printf '[orbitfl install] ERROR: %s\n' "${problems[@]}" >&2
        exit 2
    fi
fi

# 1. Build tools: a C compiler and the Python headers for the kernels.
if [ "$APT" = 1 ] && command -v apt-get >/dev/null; then
    say "installing build tools with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        python3-venv python3-dev gcc >/dev/null
fi

# 2. A system user with no shell and no home to log into.
if [ "$(id -u)" = 0 ] && ! id "$RUN_USER" >/dev/null 2>&1; then
    say "creating system user $RUN_USER"
    useradd --system --no-create-home --home-dir "$STATE" \
        --shell /usr/sbin/nologin "$RUN_USER"
fi

# 3. The virtual environment and the package, kernels compiled here by this
# machine's gcc (on a Pi: native aarch64 or armv7 code).
say "virtual environment in $PREFIX/venv"
mkdir -p "$PREFIX"
[ -x "$PREFIX/venv/bin/python" ] || "$PY" -m venv "$PREFIX/venv"
pip_opts=(-q --disable-pip-version-check)
if [ -n "$WHEELS" ]; then
    pip_opts+=(--no-index --find-links "$WHEELS")
fi
extra=""
[ "$ROLE" = ground ] && extra="[ground]"
# --no-build-isolation with the build tools preinstalled: works offline and
# builds the kernels against the NumPy that will run them.
"$PREFIX/venv/bin/pip" install "${pip_opts[@]}" --upgrade pip setuptools wheel \
    Cython numpy
say "building and installing orbitfl from $SOURCE (this compiles the kernels)"
"$PREFIX/venv/bin/pip" install "${pip_opts[@]}" --no-build-isolation \
    --upgrade "$SOURCE$extra"
accel=$(cd / && "$PREFIX/venv/bin/python" -c \
    'import agent.kernels as k; print(k.accelerated)' 2>/dev/null || echo unknown)
say "compiled kernels active: $accel"
[ "$accel" = True ] || say "WARNING: running on the NumPy kernels (slower); \
is gcc installed?"

# 4. Keys and config.
mkdir -p "$ETC/keys" "$STATE"
chmod 0755 "$ETC"
chmod 0750 "$ETC/keys"
if [ "$ROLE" = agent ]; then
    if [ ! -f "$ETC/keys/$ID.key_secret" ]; then
        say "making the CURVE key pair of $ID"
        (cd / && "$PREFIX/venv/bin/python" -m agent keygen "$ETC/keys" "$ID")
    fi
    cp "$SERVER_KEY" "$ETC/keys/ground.key"
    DATA_PATH="$STATE/shard.npz"
    [ -z "$DATA" ] || DATA_PATH="$STATE/$(basename "$DATA")"
    if [ ! -f "$ETC/agent.toml" ]; then
        # The example's own values are the placeholders.
        sed -e "s|sat-001|$ID|g" -e "s|tcp://192.0.2.10:5555|$ENDPOINT|" \
            -e "s|/etc/orbitfl|$ETC|g" -e "s|/var/lib/orbitfl|$STATE|g" \
            -e "s|$STATE/shard.npz|$DATA_PATH|" \
            "$HERE/agent.toml" >"$ETC/agent.toml"
        say "wrote $ETC/agent.toml"
    else
        say "kept the existing $ETC/agent.toml"
    fi
    if [ -n "$DATA" ] && [ "$DATA" != "$STATE/$(basename "$DATA")" ]; then
        cp "$DATA" "$STATE/"
    fi
    (cd / && "$PREFIX/venv/bin/python" -c \
        "from agent._config import load_agent_config as l; l('$ETC/agent.toml')") \
        || die "$ETC/agent.toml does not validate; fix it and run again"
    PUB="$ETC/keys/$ID.key"
else
    if [ ! -f "$ETC/keys/ground.key_secret" ]; then
        say "making the ground's CURVE key pair"
        (cd / && "$PREFIX/venv/bin/python" -m ground keygen "$ETC/keys" ground)
    fi
    mkdir -p "$ETC/allowlist"
    if [ ! -f "$ETC/ground.toml" ]; then
        sed -e "s|tcp://0.0.0.0:5555|$BIND|" -e "s|/etc/orbitfl|$ETC|g" \
            -e "s|/var/lib/orbitfl|$STATE|g" \
            "$HERE/ground.toml" >"$ETC/ground.toml"
        say "wrote $ETC/ground.toml"
    else
        say "kept the existing $ETC/ground.toml"
    fi
    (cd / && "$PREFIX/venv/bin/python" -c \
        "from ground._config import load_ground_config as l; l('$ETC/ground.toml')") \
        || die "$ETC/ground.toml does not validate; fix it and run again"
    PUB="$ETC/keys/ground.key"
fi
if [ "$(id -u)" = 0 ] && id "$RUN_USER" >/dev/null 2>&1; then
    chown -R root:"$RUN_USER" "$ETC"
    chmod 0640 "$ETC"/keys/*.key_secret
    chown -R "$RUN_USER":"$RUN_USER" "$STATE"
fi

# 5. The systemd unit.
unit="orbitfl-$ROLE.service"
if [ "$SYSTEMD" = 1 ] && command -v systemctl >/dev/null; then
    sed -e "s|/opt/orbitfl|$PREFIX|g" -e "s|/etc/orbitfl|$ETC|g" \
        -e "s|User=orbitfl|User=$RUN_USER|" -e "s|Group=orbitfl|Group=$RUN_USER|" \
        "$HERE/systemd/$unit" >"/etc/systemd/system/$unit"
    systemctl daemon-reload
    systemctl enable --now "$unit"
    say "started $unit; follow it with: journalctl -u $unit -f"
else
    say "systemd unit not installed (--no-systemd or no systemctl); run by hand:"
    say "  $PREFIX/venv/bin/python -m $ROLE $([ "$ROLE" = agent ] && echo run \
|| echo serve) --config $ETC/$ROLE.toml"
fi

if [ "$ROLE" = agent ]; then
    say "now copy $PUB to the ground's allowlist directory as $ID.key"
else
    say "give $PUB to every agent (install.sh agent --server-key ground.key);"
    say "put each agent's public key in $ETC/allowlist/ as AGENT_ID.key"
fi
