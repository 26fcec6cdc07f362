#!/usr/bin/env bash
# Checks systemd/netconverge.service and systemd/k3s-requires-netconverge.conf.
#
# usage: .ci/check-unit.sh [--self-test] [PATH/TO/netconverge]
#
#   PATH/TO/netconverge  the built binary; ExecStart of a scratch copy of the
#                        unit points at it (systemd-analyze verify fails on a
#                        missing ExecStart binary). Without it /bin/true
#                        stands in, which checks everything but the path.
#   --self-test          only prove that the checks catch deliberately broken
#                        copies (a normal run does this too, after the real
#                        checks).
#
# Why it looks the way it does (see the team notes on systemd-analyze 252):
# - most unit mistakes only WARN and exit 0, so verify fails on any stderr;
# - a misspelled capability is dropped silently, so every name is looked up
#   with `systemd-analyze capability`;
# - systemd-analyze writes /run/systemd/systemd-units-load, so it always runs
#   in a private mount namespace with a tmpfs there (needs root).
# Exits non-zero when any check fails.
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
UNIT_SRC=$ROOT/systemd/netconverge.service
DROPIN_SRC=$ROOT/systemd/k3s-requires-netconverge.conf
# ExecStart path in the shipped unit, replaced in the scratch copy.
PLACEHOLDER=/usr/local/bin/netconverge
# systemd-analyze scores 0-10 but --threshold takes 0-100: 2.5 => 25.
THRESHOLD=25

self_test_only=0
bin=
for arg in "$@"; do
    case $arg in
        --self-test) self_test_only=1 ;;
        -h|--help) sed -n '2,20p' "${BASH_SOURCE[0]}"; exit 0 ;;
        -*) echo "unknown option: $arg" >&2; exit 2 ;;
        *) bin=$arg ;;
    esac
done

if [[ -n $bin ]]; then
    if [[ ! -x $bin || -d $bin ]]; then
        echo "FAIL: binary '$bin' does not exist or is not executable" >&2
        exit 1
    fi
    bin=$(realpath -- "$bin")
else
    bin=/bin/true
    echo "NOTE: no binary given; ExecStart of the scratch unit points at /bin/true"
fi

command -v systemd-analyze >/dev/null || { echo "FAIL: systemd-analyze not installed (apt-get install systemd)" >&2; exit 1; }
command -v unshare >/dev/null || { echo "FAIL: unshare not installed (util-linux)" >&2; exit 1; }
[[ $(id -u) == 0 ]] || { echo "FAIL: must run as root (private mount namespace for systemd-analyze)" >&2; exit 1; }

work=$(mktemp -d /tmp/check-unit.XXXXXX)
trap 'rm -rf -- "$work"' EXIT

# systemd-analyze in a private mount namespace. /run/systemd does not always
# exist where PID 1 is not systemd; then /run itself gets the tmpfs (never
# create directories on the host).
sa() {
    unshare -m --propagation private sh -c '
        if [ -d /run/systemd ]; then mount -t tmpfs tmpfs /run/systemd
        else mount -t tmpfs tmpfs /run; fi || exit 99
        exec systemd-analyze "$@"' sa "$@"
}

# stage DIR UNIT DROPIN: a directory systemd-analyze can load on its own:
# the unit (ExecStart -> $bin), stub k3s/k3s-agent/kubelet units (verify
# fails on Requires= of missing units) and the k3s drop-in beside them.
stage() {
    local dir=$1 unit=$2 dropin=$3
    mkdir -p "$dir"
    sed "s#${PLACEHOLDER}#${bin}#g" "$unit" >"$dir/netconverge.service"
    local u
    for u in k3s k3s-agent kubelet; do
        printf '[Unit]\nDescription=stub %s for the unit check\n[Service]\nExecStart=/bin/true\n' "$u" >"$dir/$u.service"
    done
    for u in k3s k3s-agent; do
        mkdir -p "$dir/$u.service.d"
        cp "$dropin" "$dir/$u.service.d/netconverge.conf"
    done
}

# Each check prints "ok"/"FAIL" lines and returns non-zero on failure.

check_verify() {
    local dir=$1 rc=0
    (cd "$dir" && sa verify --man=no ./netconverge.service ./k3s.service ./k3s-agent.service) \
        >"$dir/verify.out" 2>"$dir/verify.err" || rc=$?
    if [[ $rc != 0 || -s $dir/verify.err ]]; then
        echo "FAIL verify (exit $rc; warnings count as failures):"
        sed 's/^/       /' "$dir/verify.err"
        return 1
    fi
    echo "ok   verify: netconverge.service, k3s.service + k3s-agent.service with the drop-in: no warnings"
}

check_caps() {
    local dir=$1 names name bad=0 n=0
    if ! grep -q '^CapabilityBoundingSet=' "$dir/netconverge.service"; then
        echo "FAIL capabilities: no CapabilityBoundingSet= (the service would keep every capability)"
        return 1
    fi
    names=$(sed -n 's/^\(CapabilityBoundingSet\|AmbientCapabilities\)=//p' "$dir/netconverge.service" | tr ' ' '\n' | sed 's/^~//' | grep -v '^$' || true)
    for name in $names; do
        n=$((n + 1))
        if ! sa capability "$name" >/dev/null 2>&1; then
            echo "FAIL capabilities: '$name' is not a capability systemd knows (it would be dropped silently)"
            bad=1
        fi
    done
    [[ $bad == 0 ]] || return 1
    echo "ok   capabilities: $n name(s) known to systemd: $(tr '\n' ' ' <<<"$names")"
}

check_security() {
    local dir=$1 rc=0 score
    (cd "$dir" && sa security --offline=true --threshold=$THRESHOLD ./netconverge.service) \
        >"$dir/security.out" 2>"$dir/security.err" || rc=$?
    score=$(sed -n 's/.*Overall exposure level for netconverge.service: \([0-9.]*\).*/\1/p' "$dir/security.out")
    if [[ $rc != 0 || -z $score ]]; then
        echo "FAIL security: exposure ${score:-unknown} (limit 2.5), exit $rc"
        grep '✗' "$dir/security.out" | sed 's/^/       /' || true
        sed 's/^/       /' "$dir/security.err"
        return 1
    fi
    echo "ok   security: exposure $score (limit 2.5, systemd-analyze security --offline=true --threshold=$THRESHOLD)"
}

# Project rules systemd cannot know about.
check_policy() {
    local dir=$1 u=$1/netconverge.service bad=0 want
    if grep -q '^RuntimeDirectory=' "$u"; then
        echo "FAIL policy: RuntimeDirectory= is set; systemd deletes it on stop (subnet.env must survive)"
        bad=1
    fi
    grep -qx 'ReadWritePaths=/run/flannel' "$u" || { echo "FAIL policy: ReadWritePaths=/run/flannel missing"; bad=1; }
    grep -qx 'StateDirectory=netconverge' "$u" || { echo "FAIL policy: StateDirectory=netconverge missing"; bad=1; }
    grep -qE '^Type=notify(-reload)?$' "$u" || { echo "FAIL policy: Type= is not notify/notify-reload"; bad=1; }
    grep -qx 'NotifyAccess=main' "$u" || { echo "FAIL policy: NotifyAccess=main missing"; bad=1; }
    grep -q '^WatchdogSec=' "$u" || { echo "FAIL policy: WatchdogSec= missing"; bad=1; }
    for want in k3s.service k3s-agent.service kubelet.service; do
        grep -qE "^Before=.*\\b${want}\\b" "$u" || { echo "FAIL policy: not Before=$want"; bad=1; }
    done
    if grep -qE '^(After|Wants|Requires)=.*network-online\.target' "$u"; then
        echo "FAIL policy: ordered after network-online.target (k3s would wait for full online)"
        bad=1
    fi
    if ! grep -qx 'Requires=netconverge.service' "$dir/k3s.service.d/netconverge.conf" \
        || ! grep -qx 'After=netconverge.service' "$dir/k3s.service.d/netconverge.conf"; then
        echo "FAIL policy: k3s drop-in lacks Requires=/After=netconverge.service"
        bad=1
    fi
    [[ $bad == 0 ]] || return 1
    echo "ok   policy: no RuntimeDirectory, /run/flannel + StateDirectory, notify+watchdog, before k3s/kubelet, not after network-online, drop-in requires us"
}

check_all() {
    local dir=$1 failed=0
    check_verify "$dir" || failed=1
    check_caps "$dir" || failed=1
    check_security "$dir" || failed=1
    check_policy "$dir" || failed=1
    return $failed
}

# Mutations: target (unit or dropin) % sed expression % the check that must
# catch it % why it matters. Each must change the file (else a unit edit has
# made the self-test vacuous) and must make exactly that check fail.
MUTATIONS=(
    'unit%s/^Type=notify$/Type=notfy/%verify%misspelled Type= (systemd only warns)'
    'unit%s/^ProtectSystem=strict$/ProtectSytem=strict/%verify%misspelled key (systemd only warns)'
    'unit%s/^WatchdogSec=30s$/WatchdogSec=30q/%verify%bad time span (systemd only warns)'
    'unit%s/^\(RestrictAddressFamilies=.*\)$/\1 AF_NETLNK/%verify%unknown address family (systemd only warns)'
    'unit%s#^ExecStart=[^ ]*#ExecStart=/nonexistent/netconverge#%verify%ExecStart binary missing'
    'unit%s/^CapabilityBoundingSet=CAP_NET_ADMIN$/CapabilityBoundingSet=CAP_NET_ADMN/%caps%misspelled capability (systemd drops it silently)'
    'unit%/^\(SystemCallFilter\|ProtectSystem\|PrivateDevices\|ProtectKernelTunables\|RestrictNamespaces\|ProtectProc\)=/d%security%hardening removed, exposure above 2.5'
    'unit%s#^ReadWritePaths=/run/flannel$#RuntimeDirectory=flannel#%policy%RuntimeDirectory=flannel (deleted on stop)'
    'unit%s/^Before=.*/Before=k3s.service/%policy%not ordered before kubelet/k3s-agent'
    'unit%s/^After=.*/& network-online.target/%policy%waits for network-online.target'
    'dropin%s/^Requires=/Requirs=/%verify%misspelled key in the k3s drop-in'
)

self_test() {
    local failed=0 i=0 m target expr check what dir
    echo "--- self-test: each broken copy must fail the check named"
    for m in "${MUTATIONS[@]}"; do
        i=$((i + 1))
        IFS='%' read -r target expr check what <<<"$m"
        dir=$work/mut$i
        mkdir -p "$dir/src"
        cp "$UNIT_SRC" "$dir/src/unit"
        cp "$DROPIN_SRC" "$dir/src/dropin"
        sed -i "$expr" "$dir/src/$target"
        local orig=$UNIT_SRC
        [[ $target == dropin ]] && orig=$DROPIN_SRC
        if cmp -s "$orig" "$dir/src/$target"; then
            echo "FAIL self-test #$i: mutation '$expr' did not change the $target; update the self-test"
            failed=1
            continue
        fi
        stage "$dir/stage" "$dir/src/unit" "$dir/src/dropin"
        if "check_$check" "$dir/stage" >"$dir/log" 2>&1; then
            echo "FAIL self-test #$i: check '$check' did NOT catch: $what"
            sed 's/^/       /' "$dir/log"
            failed=1
        else
            echo "ok   self-test #$i: $check catches $what"
            grep -A1 '^FAIL' "$dir/log" | grep -v '^--$' | head -n 2 | sed 's/^ *//; s/^/       -> /'
        fi
    done
    return $failed
}

status=0
if [[ $self_test_only == 0 ]]; then
    echo "--- checking $UNIT_SRC (ExecStart -> $bin) and $DROPIN_SRC"
    stage "$work/real" "$UNIT_SRC" "$DROPIN_SRC"
    check_all "$work/real" || status=1
    # The self-test must run against a unit that passes; say so if it doesn't.
    [[ $status == 0 ]] || echo "NOTE: the real unit fails; self-test results below are still meaningful per mutation"
else
    # A baseline that passes is what makes "the mutation was caught" mean
    # something.
    stage "$work/baseline" "$UNIT_SRC" "$DROPIN_SRC"
    if check_all "$work/baseline" >"$work/baseline.log" 2>&1; then
        echo "ok   self-test baseline: the unmodified unit passes"
    else
        echo "FAIL self-test baseline: the unmodified unit already fails:"
        sed 's/^/       /' "$work/baseline.log"
        status=1
    fi
fi
self_test || status=1

if [[ $status == 0 ]]; then
    echo "PASS check-unit"
else
    echo "FAILED check-unit"
fi
exit $status
