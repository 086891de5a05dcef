#!/usr/bin/env bash
# Remove what deploy/install.sh installed: the stations' units (stopped and disabled), the
# venv and /opt/inspectd, the unit template, the sysctl.d, sysusers.d and tmpfiles.d files.
# Station configs, product bundles, state (outbox) and logs are kept unless --purge.
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: deploy/uninstall.sh [OPTIONS]

  --purge        also delete /etc/inspectd (configs, product bundles), /var/lib/inspectd
                 (outbox: verdicts not yet delivered are lost), /var/log/inspectd and the
                 drop-ins in /etc/systemd/system/inspectd@*.service.d
  --root DIR     uninstall below DIR (as installed with install.sh --root DIR); same as
                 DESTDIR=DIR. Nothing is done on this machine (no systemctl).
  --libdir DIR   as given to install.sh (default /usr/local/lib)
  -h, --help     this text
EOF
}

die() { echo "uninstall.sh: error: $*" >&2; exit 1; }
say() { echo "  $*"; }

ROOT=${DESTDIR:-}
LIBDIR=/usr/local/lib
PURGE=0
while (($#)); do
    case $1 in
        --purge) PURGE=1; shift ;;
        --root) [[ -z ${DESTDIR:-} || ${DESTDIR} == "${2:-}" ]] \
                    || die "--root ${2:-} and DESTDIR=$DESTDIR disagree; give one of them"
                ROOT=${2:?--root needs a folder}; shift 2 ;;
        --libdir) LIBDIR=${2:?--libdir needs a folder}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done
if [[ -n $ROOT ]]; then
    [[ -d $ROOT ]] || die "no such folder: $ROOT"
    ROOT=$(cd "$ROOT" && pwd)
    [[ $ROOT == / ]] && ROOT=
fi
HOST=1
[[ -n $ROOT ]] && HOST=0
if ((HOST)) && [[ $(id -u) != 0 ]]; then
    die "run as root (sudo deploy/uninstall.sh), or give --root DIR"
fi
SYSTEMD=0  # a running systemd to talk to?
((HOST)) && [[ -d /run/systemd/system ]] && SYSTEMD=1

# remove PATH: delete a file or a whole folder, saying so.
remove() {
    if [[ -e $ROOT$1 || -L $ROOT$1 ]]; then
        rm -rf -- "$ROOT$1"
        say "removed    $1"
    else
        say "absent     $1"
    fi
}

keep() {
    [[ -e $ROOT$1 ]] && say "kept       $1${2:+ ($2)}"
    return 0
}

echo "inspectd uninstall${ROOT:+ from $ROOT}"

# Stations first: stop and disable every instance, so none is left running a deleted venv.
shopt -s nullglob
units=()
for link in "$ROOT"/etc/systemd/system/*.wants/inspectd@*.service; do
    units+=("${link##*/}")
done
if ((SYSTEMD)); then
    while read -r u _; do
        [[ -n $u ]] && units+=("$u")
    done < <(systemctl list-units --all --plain --no-legend 'inspectd@*.service')
fi
mapfile -t units < <(printf '%s\n' "${units[@]}" | LC_ALL=C sort -u | sed '/^$/d')
for u in "${units[@]}"; do
    if ((SYSTEMD)); then
        say "running    systemctl disable --now $u"
        systemctl disable --now "$u"
    fi
done
# what systemctl disable leaves (or all of it when there is no systemd to ask)
for link in "$ROOT"/etc/systemd/system/*.wants/inspectd@*.service; do
    remove "${link#"$ROOT"}"
done

remove "$LIBDIR/systemd/system/inspectd@.service"
remove "$LIBDIR/sysctl.d/60-inspectd-gige.conf"
remove "$LIBDIR/tmpfiles.d/inspectd-usb3vision.conf"
remove "$LIBDIR/sysusers.d/inspectd.conf"
remove /opt/inspectd
# caches (CUDA JIT and the like) are rebuilt when needed
remove /var/cache/inspectd

if ((PURGE)); then
    for outbox in "$ROOT"/var/lib/inspectd/*/outbox.db; do
        echo "uninstall.sh: deleting ${outbox#"$ROOT"} (verdicts not yet delivered are lost)" >&2
    done
    remove /etc/inspectd
    remove /var/lib/inspectd
    remove /var/log/inspectd
    for d in "$ROOT"/etc/systemd/system/inspectd@*.service.d; do
        remove "${d#"$ROOT"}"
    done
else
    keep /etc/inspectd "station configs and product bundles; --purge deletes them"
    keep /var/lib/inspectd "station state and outbox; --purge deletes it"
    keep /var/log/inspectd "--purge deletes it"
    for d in "$ROOT"/etc/systemd/system/inspectd@*.service.d; do
        keep "${d#"$ROOT"}" "drop-ins; --purge deletes them"
    done
fi

if ((SYSTEMD)); then
    say "running    systemctl daemon-reload"
    systemctl daemon-reload
    for u in "${units[@]}"; do
        systemctl reset-failed "$u" 2>/dev/null || true
    done
elif ((HOST)); then
    say "skipped    systemctl daemon-reload (systemd is not running here)"
else
    say "skipped    systemctl disable/daemon-reload (uninstalling from $ROOT)"
fi
# A system user is kept (as Debian does): files it owns may remain, and its id must not be
# given to another user.
if ((HOST)) && getent passwd inspectd >/dev/null; then
    say "kept       user inspectd (userdel inspectd once no files of it are left)"
fi
if ((HOST)); then
    echo "uninstall.sh: done; the GigE and USB settings stay in effect until the next boot"
else
    echo "uninstall.sh: done"
fi
