#!/usr/bin/env bash
# Install inspectd as a systemd service: the system user, a venv under /opt/inspectd, the
# inspectd@.service template, the GigE sysctl and USB3 Vision tmpfiles snippets, and a station
# config per station. Idempotent: a second run changes nothing. An edited station config is
# never overwritten. See docs/service.md; `deploy/install.sh --help` lists the options.
set -euo pipefail
# Whatever umask sudo gives us: the venv and /opt/inspectd must be readable by user inspectd.
umask 022

usage() {
    cat <<'EOF'
Usage: deploy/install.sh [OPTIONS]

  --station NAME       write /etc/inspectd/NAME.yaml for inspectd@NAME (repeatable). Default:
                       the stations installed before, or station1 when /etc/inspectd has none.
  --root DIR           install below DIR (packaging, tests); same as DESTDIR=DIR. Nothing is
                       done on this machine: no user, no sysctl, no systemctl.
  --libdir DIR         where the unit, sysctl.d, sysusers.d and tmpfiles.d files go
                       (default /usr/local/lib; a distribution package would use /usr/lib)
  --python PATH        Python >= 3.11 for the venv (default: python3)
  --system-site-packages
                       let the venv see system packages (Jetson: TensorRT's Python bindings
                       come with JetPack)
  --extras LIST        extras to install, e.g. genicam
  --package SPEC       what pip installs (default: this source tree), e.g. a wheel file
  --pip-args ARGS      more arguments for pip install, e.g. "--no-index --find-links DIR"
  --no-venv            skip the venv (also INSPECTD_SKIP_VENV=1)
  --no-products        do not copy the repository's product bundles to /etc/inspectd/products
  -h, --help           this text
EOF
}

die() { echo "install.sh: error: $*" >&2; exit 1; }
say() { echo "  $*"; }

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=${DESTDIR:-}
LIBDIR=/usr/local/lib
PYTHON=python3
SYSTEM_SITE=0
EXTRAS=
PACKAGE=
PIP_ARGS=
SKIP_VENV=${INSPECTD_SKIP_VENV:-0}
PRODUCTS=1
STATIONS=()

while (($#)); do
    case $1 in
        --station) STATIONS+=("${2:?--station needs a name}"); shift 2 ;;
        --root) [[ -z ${DESTDIR:-} || ${DESTDIR} == "${2:-}" ]] \
                    || die "--root ${2:-} and DESTDIR=$DESTDIR disagree; give one of them"
                ROOT=${2:?--root needs a folder}; shift 2 ;;
        --libdir) LIBDIR=${2:?--libdir needs a folder}; shift 2 ;;
        --python) PYTHON=${2:?--python needs a path}; shift 2 ;;
        --system-site-packages) SYSTEM_SITE=1; shift ;;
        --extras) EXTRAS=${2?--extras needs a list}; shift 2 ;;
        --package) PACKAGE=${2:?--package needs a wheel, folder or requirement}; shift 2 ;;
        --pip-args) PIP_ARGS=${2?--pip-args needs a value}; shift 2 ;;
        --no-venv) SKIP_VENV=1; shift ;;
        --no-products) PRODUCTS=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

for s in "${STATIONS[@]}"; do
    # the station name is a file name, a systemd instance name and part of MQTT topics
    [[ $s =~ ^[A-Za-z0-9_-]+$ ]] || die "station name '$s': letters, digits, _ and - only"
done
[[ $LIBDIR == /* ]] || die "--libdir must be an absolute path: $LIBDIR"
if [[ -n $ROOT ]]; then
    mkdir -p "$ROOT"
    ROOT=$(cd "$ROOT" && pwd)
    [[ $ROOT == / ]] && ROOT=
fi
HOST=1  # act on this machine (user, sysctl, systemctl)?
[[ -n $ROOT ]] && HOST=0
if ((HOST)) && [[ $(id -u) != 0 ]]; then
    die "run as root (sudo deploy/install.sh), or give --root DIR to install into a folder"
fi

OPT=/opt/inspectd
ETC=/etc/inspectd
UNIT=$LIBDIR/systemd/system/inspectd@.service
SYSCTL=$LIBDIR/sysctl.d/60-inspectd-gige.conf
SYSUSERS=$LIBDIR/sysusers.d/inspectd.conf
TMPFILES=$LIBDIR/tmpfiles.d/inspectd-usb3vision.conf
RECORDS=$ETC/.installed  # sha256 of each station config as install.sh wrote it
CHANGED=0
SKIPPED=()

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# put SRC DEST MODE: install a file unless DEST already has these bytes and this mode.
put() {
    local src=$1 dest=$ROOT$2 mode=$3
    if [[ -f $dest ]] && cmp -s "$src" "$dest" && [[ $(stat -c %a "$dest") == "${mode#0}" ]]; then
        say "unchanged  $2"
        return
    fi
    install -D -m "$mode" "$src" "$dest.tmp.$$"
    mv -f "$dest.tmp.$$" "$dest"  # atomic: a reader sees the old file or the new one
    say "installed  $2"
    CHANGED=$((CHANGED + 1))
}

# dir PATH MODE: make a directory with this mode.
dir() {
    local d=$ROOT$1 mode=$2
    if [[ -d $d && $(stat -c %a "$d") == "${mode#0}" ]]; then
        return
    fi
    install -d -m "$mode" "$d"
    say "created    $1/"
    CHANGED=$((CHANGED + 1))
}

skip() { SKIPPED+=("$*"); }

# on the host: run a command that must work; in a root: note what was skipped.
host() {
    if ((HOST)); then
        say "running    $*"
        "$@"
    else
        skip "$*"
    fi
}

# like host, but a failure only warns (e.g. /proc/sys read-only in a container).
host_try() {
    if ((HOST)); then
        say "running    $*"
        "$@" || echo "install.sh: warning: '$*' failed; it takes effect at the next boot" >&2
    else
        skip "$*"
    fi
}

echo "inspectd install from $SRC${ROOT:+ into $ROOT}"

# --- systemd files ------------------------------------------------------------------------
put "$SRC/systemd/sysusers.d/inspectd.conf" "$SYSUSERS" 0644
put "$SRC/systemd/inspectd@.service" "$UNIT" 0644
put "$SRC/systemd/sysctl.d/60-inspectd-gige.conf" "$SYSCTL" 0644
put "$SRC/systemd/tmpfiles.d/inspectd-usb3vision.conf" "$TMPFILES" 0644

# The user before any file that belongs to it. systemd-sysusers also adds it to video,
# plugdev and render, creating a group that is missing.
if ((HOST)); then
    if command -v systemd-sysusers >/dev/null; then
        host systemd-sysusers "$SYSUSERS"
    else
        # no systemd-sysusers: the same with shadow's tools
        if ! getent passwd inspectd >/dev/null; then
            host useradd --system --user-group --home-dir /var/lib/inspectd --no-create-home \
                --shell /usr/sbin/nologin --comment "inspectd inspection daemon" inspectd
        fi
        for g in video plugdev render; do
            getent group "$g" >/dev/null || host groupadd --system "$g"
            id -nG inspectd | tr ' ' '\n' | grep -qx "$g" || host usermod -a -G "$g" inspectd
        done
    fi
else
    skip "systemd-sysusers $SYSUSERS (creates user inspectd)"
fi

# --- /opt/inspectd: docs, examples, venv -------------------------------------------------
dir "$OPT" 0755
put "$SRC/docs/service.md" "$OPT/share/doc/service.md" 0644
put "$SRC/systemd/station.example.yaml" "$OPT/share/station.example.yaml" 0644
for f in "$SRC"/systemd/dropins/*.conf; do
    put "$f" "$OPT/share/dropins/${f##*/}" 0644
done

# The venv lives in venvs/<version>-<key> and /opt/inspectd/venv is a symlink to it. The key
# is a hash of everything that goes into it (source, Python, options), so an unchanged install
# does nothing, and a new one is built beside the old one and switched to only once it works:
# a failed upgrade (no network, a build error) leaves the running station's venv as it was.
install_venv() {
    local py pyver spec srchash key version name target link=$ROOT$OPT/venv
    py=$(command -v "$PYTHON") || die "no Python '$PYTHON'; give one with --python PATH"
    "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$py is Python $("$py" -c 'import platform; print(platform.python_version())'); inspectd needs >= 3.11 (--python PATH)"
    "$py" -c 'import venv, ensurepip' 2>/dev/null \
        || die "$py cannot create a venv with pip (Debian/Ubuntu: apt-get install python3-venv)"
    py=$("$py" -c 'import sys; print(sys.executable)')  # the real one, not a shim
    pyver=$("$py" -c 'import sys; print(sys.version)')
    if [[ -n $PACKAGE ]]; then
        spec=$PACKAGE
        if [[ -e $PACKAGE ]]; then
            srchash=$(find "$PACKAGE" -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum)
        else
            srchash=$PACKAGE  # a requirement such as inspectd==0.1.0
        fi
    else
        # Build from a copy: pip must not leave build/ and *.egg-info in the source tree (which
        # may be read-only), and the hash must cover only what goes into the package.
        mkdir "$TMP/src"
        tar -C "$SRC" --exclude=.git --exclude=.venv --exclude=venv --exclude=build \
            --exclude=dist --exclude='*.egg-info' --exclude=__pycache__ --exclude='*.pyc' \
            --exclude=.pytest_cache --exclude=.ruff_cache --exclude=.mypy_cache \
            --exclude=demo-out --exclude=.work --exclude=products -cf - . | tar -C "$TMP/src" -xf -
        spec=$TMP/src
        srchash=$(cd "$TMP/src" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum)
    fi
    [[ -n $EXTRAS ]] && spec="${spec}[$EXTRAS]"
    key=$(printf '%s\n' "$srchash" "$py" "$pyver" "$SYSTEM_SITE" "$EXTRAS" "$PIP_ARGS" | sha256sum | cut -c1-12)
    version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$SRC/pyproject.toml" | head -n1)
    name=${version:-unknown}-$key
    target=$ROOT$OPT/venvs/$name

    if [[ -L $link && $(readlink "$link") == "venvs/$name" && -f $target/.complete ]]; then
        say "unchanged  $OPT/venv -> venvs/$name"
    else
        rm -rf "$target"  # a half-built one from an interrupted run
        mkdir -p "$ROOT$OPT/venvs"
        local venv_args=()
        ((SYSTEM_SITE)) && venv_args+=(--system-site-packages)
        say "creating   $OPT/venvs/$name ($py, Python ${pyver%% *})"
        "$py" -m venv "${venv_args[@]}" "$target"
        say "running    pip install $spec $PIP_ARGS"
        # shellcheck disable=SC2086  # PIP_ARGS is a list of arguments
        "$target/bin/python" -m pip install $PIP_ARGS "$spec" \
            || { rm -rf "$target"; die "pip install failed; $OPT/venv is unchanged"; }
        "$target/bin/inspectd" --version >/dev/null \
            || { rm -rf "$target"; die "the new venv's inspectd does not run; $OPT/venv is unchanged"; }
        touch "$target/.complete"
        ln -sfn "venvs/$name" "$link.tmp.$$"
        mv -Tf "$link.tmp.$$" "$link"  # atomic switch
        say "installed  $OPT/venv -> venvs/$name"
        CHANGED=$((CHANGED + 1))
        if ((!HOST)); then
            echo "install.sh: note: the venv's scripts point into $ROOT; it runs from there," \
                 "not after copying it elsewhere (venvs are not relocatable)" >&2
        fi
    fi
    # Older venvs: the one before stays (running stations use it until they are restarted);
    # older ones and half-built ones go.
    local old previous=0
    while IFS= read -r old; do
        [[ -n $old ]] || continue
        if ((previous == 0)) && [[ -f $old/.complete ]]; then
            previous=1
            continue
        fi
        rm -rf "$old"
        say "removed    $OPT/venvs/${old##*/}"
        CHANGED=$((CHANGED + 1))
    done < <(
        for old in "$ROOT$OPT"/venvs/*/; do
            old=${old%/}
            [[ -d $old && ${old##*/} != "$name" ]] || continue
            printf '%s %s\n' "$(stat -c %Y "$old/.complete" 2>/dev/null || echo 0)" "$old"
        done | sort -rn | cut -d' ' -f2-
    )
}

if [[ $SKIP_VENV == 1 ]]; then
    say "skipped    venv (--no-venv or INSPECTD_SKIP_VENV=1)"
else
    install_venv
fi

# --- /etc/inspectd: products and station configs ----------------------------------------
dir "$ETC" 0755
dir "$RECORDS" 0755
if ((PRODUCTS)) && [[ -d $SRC/products ]]; then
    dir "$ETC/products" 0755
    for p in "$SRC"/products/*/; do
        p=${p%/}
        [[ -f $p/manifest.yaml ]] || continue
        if [[ -e $ROOT$ETC/products/${p##*/} ]]; then
            # bundles are the operators' (calibrated thresholds, engines built on the target)
            say "kept       $ETC/products/${p##*/} (exists; bundles are never replaced)"
        else
            cp -R "$p" "$ROOT$ETC/products/${p##*/}.tmp.$$"
            chmod -R u=rwX,go=rX "$ROOT$ETC/products/${p##*/}.tmp.$$"
            mv "$ROOT$ETC/products/${p##*/}.tmp.$$" "$ROOT$ETC/products/${p##*/}"
            say "installed  $ETC/products/${p##*/}/"
            CHANGED=$((CHANGED + 1))
        fi
    done
fi

# The stations: those asked for, those installed before (so an upgrade updates their
# untouched configs), or station1 on a first install.
for r in "$ROOT$RECORDS"/*.yaml.sha256; do
    [[ -e $r ]] || continue
    r=${r##*/}
    STATIONS+=("${r%.yaml.sha256}")
done
if ((${#STATIONS[@]} == 0)); then
    if compgen -G "$ROOT$ETC/*.yaml" >/dev/null; then
        say "kept       $ETC/*.yaml (not written by install.sh; --station NAME adds a station)"
    else
        STATIONS=(station1)
    fi
fi
mapfile -t STATIONS < <(printf '%s\n' "${STATIONS[@]}" | LC_ALL=C sort -u | sed '/^$/d')

# The example with this station's name and its own directories (StateDirectory=inspectd/%i).
station_config() {
    local s=$1 out=$2 ex=$SRC/systemd/station.example.yaml
    local -a edits=(
        "s|^  name: station1\$|  name: $s|"
        "s|^state_dir: /var/lib/inspectd\$|state_dir: /var/lib/inspectd/$s|"
        "s|^  path: /var/lib/inspectd/incoming\$|  path: /var/lib/inspectd/$s/incoming|"
    )
    local e pattern
    for e in "${edits[@]}"; do
        pattern=${e#s|}
        pattern=${pattern%%|*}
        [[ $(grep -c -- "$pattern" "$ex") == 1 ]] \
            || die "$ex no longer has exactly one line matching '$pattern'; update station_config in $0"
    done
    {
        echo "# inspectd@$s: written by deploy/install.sh from systemd/station.example.yaml."
        echo "# Edit freely: install.sh never overwrites an edited file (it writes $s.yaml.new beside it)."
        echo "# state_dir must stay /var/lib/inspectd/$s: the only state folder the service may write."
        echo "#"
        sed -e "${edits[0]}" -e "${edits[1]}" -e "${edits[2]}" "$ex"
    } >"$out"
}

# config_file SRC DEST: write a station config, readable by the daemon's group only (it may
# hold the MQTT password).
config_file() {
    install -m 0640 "$1" "$ROOT$2.tmp.$$"
    if ((HOST)); then
        chgrp inspectd "$2.tmp.$$"
    else
        skip "chgrp inspectd $2"
    fi
    mv -f "$ROOT$2.tmp.$$" "$ROOT$2"
    CHANGED=$((CHANGED + 1))
}

for s in "${STATIONS[@]}"; do
    cfg=$ETC/$s.yaml
    record=$RECORDS/$s.yaml.sha256
    station_config "$s" "$TMP/$s.yaml"
    new_sum=$(sha256sum <"$TMP/$s.yaml" | cut -d' ' -f1)
    installed_sum=
    [[ -f $ROOT$record ]] && installed_sum=$(cut -d' ' -f1 <"$ROOT$record")
    wrote=0
    if [[ ! -e $ROOT$cfg ]]; then
        config_file "$TMP/$s.yaml" "$cfg"
        say "installed  $cfg"
        wrote=1
    else
        cur_sum=$(sha256sum <"$ROOT$cfg" | cut -d' ' -f1)
        if [[ $cur_sum == "$new_sum" ]]; then
            say "unchanged  $cfg"
        elif [[ $cur_sum == "$installed_sum" ]]; then
            # nobody edited it since install.sh wrote it: the new example replaces it
            config_file "$TMP/$s.yaml" "$cfg"
            say "updated    $cfg (not edited since it was installed)"
            wrote=1
        else
            # edited (or not written by install.sh): not a byte of it is touched
            if [[ -f $ROOT$cfg.new ]] && cmp -s "$TMP/$s.yaml" "$ROOT$cfg.new"; then
                say "kept       $cfg (edited; the current example is in $cfg.new)"
            else
                config_file "$TMP/$s.yaml" "$cfg.new"
                say "kept       $cfg (edited; wrote the current example to $cfg.new)"
            fi
            echo "install.sh: $cfg was edited since it was installed; left as it is." >&2
            echo "  Compare it with the current example: diff -u $cfg $cfg.new" >&2
            continue  # the record keeps the sum of what install.sh wrote last
        fi
    fi
    if [[ $installed_sum != "$new_sum" ]]; then
        printf '%s  %s\n' "$new_sum" "$s.yaml" >"$ROOT$record"
        chmod 0644 "$ROOT$record"
        say "recorded   $record"
        CHANGED=$((CHANGED + 1))
    fi
    # the folder camera of the example reads from here; systemd fixes the owner at start
    if ((wrote)) && [[ ! -d $ROOT/var/lib/inspectd/$s/incoming ]]; then
        install -d -m 0750 "$ROOT/var/lib/inspectd/$s" "$ROOT/var/lib/inspectd/$s/incoming"
        say "created    /var/lib/inspectd/$s/incoming/"
        CHANGED=$((CHANGED + 1))
        if ((HOST)); then
            chown inspectd:inspectd "/var/lib/inspectd/$s" "/var/lib/inspectd/$s/incoming"
        else
            skip "chown inspectd:inspectd /var/lib/inspectd/$s /var/lib/inspectd/$s/incoming"
        fi
    fi
done

# --- apply on this machine ---------------------------------------------------------------
host_try sysctl -q -p "$SYSCTL"
host_try systemd-tmpfiles --create "$TMPFILES"
if ((HOST)) && [[ -d /run/systemd/system ]]; then
    host systemctl daemon-reload
    running=$(systemctl list-units --plain --no-legend --state=running 'inspectd@*.service' | cut -d' ' -f1 | xargs)
    if [[ -n $running ]]; then
        echo "install.sh: running now: $running; they use the new venv after: systemctl restart $running"
    fi
elif ((HOST)); then
    skip "systemctl daemon-reload (systemd is not running here)"
else
    skip "systemctl daemon-reload"
fi

if ((${#SKIPPED[@]})); then
    echo "skipped${ROOT:+ (installing into $ROOT)}:"
    for s in "${SKIPPED[@]}"; do say "$s"; done
fi
echo "install.sh: done, $CHANGED change(s)"
if ((CHANGED)) && ((HOST)); then
    echo "next: edit /etc/inspectd/<station>.yaml, check it with"
    echo "  sudo -u inspectd $OPT/venv/bin/inspectd check-config /etc/inspectd/<station>.yaml"
    echo "and start it with: systemctl enable --now inspectd@<station>"
fi
