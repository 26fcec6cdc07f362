#!/usr/bin/env bash
# Checks the Nix packaging with nixpkgs' real module system, without nixpkgs
# itself (which cannot be fetched in CI).
#
# usage: .ci/check-nix.sh [--self-test] [--no-binary] [PATH/TO/netconverge]
#
#   0. nixpkgs' lib must be at ../shared/vendor/nixpkgs-lib beside the
#      repository (read-only is fine); missing, the check FAILS;
#   1. `nix-instantiate --parse` on every .nix file in the repository;
#   2. nix/tests/eval-module.nix and nix/tests/eval-flake.nix: the module,
#      package, flake, default.nix and NixOS examples evaluated by the real
#      lib.evalModules and lib.types, over minimal declarations of the NixOS
#      options the module uses (nix/tests/nixos-options.nix) and stand-ins
#      for `pkgs` derivations (nix/tests/pkgs.nix); wrongly typed values are
#      rejected by the real types;
#   3. parity: the NixOS unit and systemd/netconverge.service carry the same
#      ordering, hardening and lifecycle settings (differences are listed);
#   4. the example configs rendered to TOML; `netconverge --config FILE
#      validate` must accept each of them (the same check the module runs at
#      build time). The binary is PATH/TO/netconverge, else
#      target/debug/netconverge; missing, the check FAILS (--no-binary skips
#      it, saying so);
#   5. the NixOS unit rendered as systemd would see it: exposure score
#      (`systemd-analyze security --offline=true --threshold=25`), when
#      systemd-analyze is installed;
#   6. self-test: broken copies of the module/package/examples/a .nix file,
#      and a copy without ../shared, must fail (also part of a normal run).
# Exits non-zero when any check fails. Runs as root or not, in a few
# seconds; needs nix-bin and jq. Evaluation only: nothing is built or
# written to a Nix store (--readonly-mode, private NIX_STATE_DIR).
set -euo pipefail

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
# Debian's nix-bin warns about a missing nixbld group on every call; nothing
# here builds, so no build users are needed.
export NIX_CONFIG="build-users-group ="

self_test_only=0
no_binary=0
bin=
for arg in "$@"; do
    case $arg in
        --self-test) self_test_only=1 ;;
        --no-binary) no_binary=1 ;;
        -h|--help) sed -n '2,33p' "${BASH_SOURCE[0]}"; exit 0 ;;
        -*) echo "unknown option: $arg" >&2; exit 2 ;;
        *) bin=$arg ;;
    esac
done
if [[ -z $bin && $no_binary == 0 ]]; then
    bin=$ROOT/target/debug/netconverge
    [[ -x $bin ]] || { echo "FAIL: no binary at $bin to validate the example configs with: run \`cargo build\` first, pass PATH/TO/netconverge, or --no-binary" >&2; exit 1; }
fi
if [[ -n $bin ]]; then
    [[ -x $bin && ! -d $bin ]] || { echo "FAIL: binary '$bin' does not exist or is not executable" >&2; exit 1; }
    bin=$(realpath -- "$bin")
fi

for tool in nix-instantiate jq; do
    command -v $tool >/dev/null || { echo "FAIL: $tool not installed (apt-get install nix-bin jq)" >&2; exit 1; }
done

work=$(mktemp -d /tmp/check-nix.XXXXXX)
trap 'rm -rf -- "$work"' EXIT
# A private, empty Nix state: nothing of the host's /nix/var is read or
# written, and it works without root.
export NIX_STATE_DIR=$work/nix-state

# --- 0. nixpkgs' lib ----------------------------------------------------------
# Where the tests import it from (nix/tests/lib.nix): ../shared beside the
# tree. Self-test copies get a link to the same directory.
LIB_REL=../shared/vendor/nixpkgs-lib
check_lib() {
    local tree=$1
    if [[ ! -f $tree/$LIB_REL/lib/default.nix ]]; then
        echo "FAIL nixpkgs-lib: $(realpath -m -- "$tree/$LIB_REL") is missing: the Nix checks evaluate the module with nixpkgs' real lib, vendored in ../shared/vendor/nixpkgs-lib beside the repository (see its README); without it nothing is checked"
        return 1
    fi
    echo "ok   nixpkgs-lib: $(realpath -- "$tree/$LIB_REL") ($(nix-instantiate --readonly-mode --eval -E "(import $(realpath -- "$tree/$LIB_REL/lib")).version" 2>/dev/null | tr -d '"'), on Nix $(nix-instantiate --version | sed 's/.* //'))"
}

# --- 1. parse ---------------------------------------------------------------
check_parse() {
    local tree=$1 f bad=0 files=()
    mapfile -d '' files < <(find "$tree" \( -name .git -o -name target -o -name result \) -prune -o -name '*.nix' -type f -print0 | sort -z)
    [[ ${#files[@]} -gt 0 ]] || { echo "FAIL parse: no .nix files found under $tree"; return 1; }
    # One call for all (fast); on failure one per file, to name each broken one.
    if ! nix-instantiate --parse "${files[@]}" >/dev/null 2>&1; then
        for f in "${files[@]}"; do
            if ! nix-instantiate --parse "$f" >/dev/null 2>"$work/parse.err"; then
                echo "FAIL parse: ${f#"$tree"/}"
                sed 's/^/       /' "$work/parse.err"
                bad=1
            fi
        done
        [[ $bad == 1 ]] || { echo "FAIL parse: nix-instantiate --parse failed on the files together but on none alone"; return 1; }
        return 1
    fi
    echo "ok   parse: ${#files[@]} .nix files"
}

# --- 2. evaluation ----------------------------------------------------------
eval_json() {
    local tree=$1 file=$2 out=$3
    if ! nix-instantiate --readonly-mode --eval --strict --json "$tree/$file" >"$out" 2>"$out.err"; then
        echo "FAIL eval $file:"
        sed 's/^/       /' "$out.err"
        return 1
    fi
}

check_eval() {
    local tree=$1 ok=0
    if eval_json "$tree" nix/tests/eval-module.nix "$work/module.json"; then
        echo "ok   eval nix/tests/eval-module.nix: $(jq '.passed | length' "$work/module.json") checks"
        jq -r '.passed[] | "       - " + .' "$work/module.json"
    else
        ok=1
    fi
    if eval_json "$tree" nix/tests/eval-flake.nix "$work/flake.json"; then
        echo "ok   eval nix/tests/eval-flake.nix: $(jq '.passed | length' "$work/flake.json") checks"
        jq -r '.passed[] | "       - " + .' "$work/flake.json"
    else
        ok=1
    fi
    return $ok
}

# --- 3. parity with systemd/netconverge.service -----------------------------
# Key=value lines of a unit's [Service] section, booleans as true/false and
# store paths as FHS paths. Repeated keys: for settings where systemd treats
# repeated lines like one space-separated list (ADDITIVE) they are joined by
# " "; otherwise by " | ", because there the split matters (a
# SystemCallFilter= line starting with "~" is a deny list for that line only).
ADDITIVE='CapabilityBoundingSet AmbientCapabilities RestrictAddressFamilies ReadWritePaths ReadOnlyPaths InaccessiblePaths'
unit_service_kv() {
    awk -v additive="$ADDITIVE" '
        BEGIN { n = split(additive, a, " "); for (i = 1; i <= n; i++) add[a[i]] = 1 }
        /^\[Service\]/ { s = 1; next }
        /^\[/ { s = 0 }
        s && /^[A-Za-z]+=/ {
            k = $0; sub(/=.*/, "", k); v = substr($0, length(k) + 2)
            if (v == "yes") v = "true"; if (v == "no") v = "false"
            if (k in val) val[k] = val[k] ((k in add) ? " " : " | ") v
            else val[k] = v
        }
        END { for (k in val) print k "\t" val[k] }' "$1" | sort
}
module_service_kv() {
    jq -r --arg additive "$ADDITIVE" '($additive | split(" ")) as $add | .serviceConfig | to_entries[] |
        .key as $k | (if ($add | index([$k])) then " " else " | " end) as $sep |
        "\($k)\t\(if (.value|type) == "array" then (.value | map(tostring) | join($sep)) else (.value|tostring) end)"' "$1" \
        | sed -E 's#/nix/store/[a-z0-9]{32}-[^/ ]*/bin/#/bin/#g' | sort
}
# Intended differences (see the header of nix/module.nix): the reload
# mechanism and the store path / argument quoting of ExecStart.
PARITY_EXEMPT='^(Type|ExecReload|ExecStart)\t'

check_parity() {
    local tree=$1 unitfile=$1/systemd/netconverge.service
    unit_service_kv "$unitfile" | grep -Pv "$PARITY_EXEMPT" >"$work/unit.kv" || true
    # The full example adds --log-format; compare the module's unit as
    # rendered for it, minus the exempt keys.
    module_service_kv "$work/module.json" | grep -Pv "$PARITY_EXEMPT" >"$work/module.kv" || true
    if ! diff -u --label systemd/netconverge.service "$work/unit.kv" --label nix/module.nix "$work/module.kv" >"$work/parity.diff"; then
        echo "FAIL parity: [Service] settings differ between the unit file and the NixOS module:"
        sed 's/^/       /' "$work/parity.diff"
        return 1
    fi
    local u m
    for key in After Before Wants WantedBy; do
        u=$(sed -n "s/^$key=//p" "$unitfile" | tr '\n' ' ' | xargs)
        m=$(jq -r --arg k "$key" '.unit[($k[:1] | ascii_downcase) + $k[1:]] // [] | join(" ")' "$work/module.json")
        if [[ $u != "$m" ]]; then
            echo "FAIL parity: $key= differs: unit '$u' vs module '$m'"
            return 1
        fi
    done
    echo "ok   parity: $(wc -l <"$work/unit.kv") [Service] settings + After/Before/Wants/WantedBy identical (exempt: Type, ExecReload, ExecStart)"
}

# --- 4. example configs -----------------------------------------------------
check_configs() {
    local name node n=0 bad=0
    mkdir -p "$work/toml"
    for name in $(jq -r '.toml | keys[]' "$work/module.json"); do
        jq -r --arg n "$name" '.toml[$n]' "$work/module.json" >"$work/toml/$name.toml"
        n=$((n + 1))
        if [[ -n $bin ]]; then
            # A fleet host's file is validated as that node (`--node NAME`).
            node=$(jq -r --arg n "$name" '.nodes[$n] // empty' "$work/module.json")
            if ! "$bin" ${node:+--node "$node"} --config "$work/toml/$name.toml" validate >"$work/toml/$name.out" 2>&1; then
                echo "FAIL config: netconverge validate rejects the $name example:"
                sed 's/^/       /' "$work/toml/$name.out"
                bad=1
            fi
        fi
    done
    [[ $bad == 0 ]] || return 1
    if [[ -n $bin ]]; then
        echo "ok   configs: $n example configs accepted by $bin validate"
    else
        echo "SKIP configs: $n example configs render to TOML (round-trip checked in eval), but \`validate\` was NOT run (--no-binary)"
    fi
}

# --- 5. exposure of the NixOS unit ------------------------------------------
check_module_security() {
    if ! command -v systemd-analyze >/dev/null || ! command -v unshare >/dev/null || [[ $(id -u) != 0 ]]; then
        echo "SKIP module security: needs root, unshare and systemd-analyze"
        return 0
    fi
    mkdir -p "$work/unit"
    # As NixOS writes it: one line per list element, booleans true/false.
    jq -r '"[Unit]\nDescription=netconverge (rendered from nix/module.nix)\n[Service]",
        (.serviceConfig | to_entries[] | .key as $k |
         (if (.value|type) == "array" then .value[] else .value end) | "\($k)=\(tostring)")' \
        "$work/module.json" >"$work/unit/netconverge.service"
    local rc=0 score
    (cd "$work/unit" && unshare -m --propagation private sh -c '
        if [ -d /run/systemd ]; then mount -t tmpfs tmpfs /run/systemd; else mount -t tmpfs tmpfs /run; fi || exit 99
        exec systemd-analyze security --offline=true --threshold=25 ./netconverge.service') \
        >"$work/unit/security.out" 2>"$work/unit/security.err" || rc=$?
    # systemd < 253 does not know notify-reload: that warning, and only it, is expected.
    grep -v 'Failed to parse service type, ignoring: notify-reload' "$work/unit/security.err" >"$work/unit/security.err2" || true
    score=$(sed -n 's/.*Overall exposure level for netconverge.service: \([0-9.]*\).*/\1/p' "$work/unit/security.out")
    if [[ $rc != 0 || -z $score || -s $work/unit/security.err2 ]]; then
        echo "FAIL module security: exposure ${score:-unknown} (limit 2.5), exit $rc"
        sed 's/^/       /' "$work/unit/security.err2"
        return 1
    fi
    echo "ok   module security: NixOS unit exposure $score (limit 2.5)"
}

check_all() {
    local tree=$1 failed=0
    check_lib "$tree" || return 1
    check_parse "$tree" || failed=1
    if check_eval "$tree"; then
        check_parity "$tree" || failed=1
        check_configs || failed=1
        check_module_security || failed=1
    else
        failed=1
    fi
    return $failed
}

# --- 6. self-test -----------------------------------------------------------
# file % sed expression % the check that must report it (eval-module,
# eval-flake, parity, parse) % why it matters [% an extended regex the
# failure must print: the reason, where it matters which error it is]. Each
# must change the file and make that check fail on a copy of the tree.
# shellcheck disable=SC2016 # ${...} are Nix, not shell
MUTATIONS=(
    'nix/module.nix%s/Type = "notify-reload";/Type = "simple";/%eval-module%unit Type'
    'nix/module.nix%s/requires = \[ "netconverge.service" \];/requires = [ ];/%eval-module%k3s no longer requires netconverge'
    'nix/module.nix%s/"interface-name:${name}"/name/%eval-module%NetworkManager unmanaged entries lose their interface-name: prefix'
    'nix/module.nix%/ProtectKernelModules = true;/d%eval-module%hardening key dropped'
    'nix/module.nix%s/UMask = "0022";/UMask = "0077";/%parity%module value differs from the unit file'
    'systemd/netconverge.service%s/^ProtectClock=yes$/ProtectClock=no/%parity%unit file value differs from the module'
    'nix/module.nix%s/StateDirectoryMode = "0700";/RuntimeDirectory = "flannel";/%eval-module%RuntimeDirectory=flannel'
    'nix/module.nix%s/ --config \${generatedConfig} validate/ --version/%eval-module%config no longer validated at build time'
    'nix/package.nix%s/cargoTestFlags = \[ "--lib" \];/cargoTestFlags = [ ];/%eval-module%root-needing tests would run in the sandbox'
    'nix/package.nix%s#--replace-fail /bin/kill#--replace-fail /usr/bin/pkill#%eval-module%substituteInPlace pattern missing from the unit'
    'nix/package.nix%s#(fs.maybeMissing ../tests)#../.#%eval-module%package src is the whole repository'
    'examples/nixos/fleet.nix%s/"--flannel-backend=none"/"--flannel-backend=vxlan"/%eval-module%example keeps k3s flannel'
    'examples/nixos/fleet-cluster.nix%s/name = "node-c";/name = "node-x";/%eval-module%a fleet host whose name is not in the fleet%is not a node of fleet-cluster.nix'
    'examples/nixos/fleet-cluster.nix%s#subnet = "198.18.3.0/24";#subnet = "198.18.2.0/24";#%config%two fleet nodes with one pod subnet (netconverge validate --node)%is the same as subnet'
    'flake.nix%s/nixosModules.default = .\/nix\/module.nix;/nixosModules.default = .\/nix\/package.nix;/%eval-flake%wrong module in the flake'
    'nix/default.nix%s/^{$/{ {/%parse%syntax error'
    # The real type system and module semantics:
    'examples/nixos/fleet-cluster.nix%s/vni = 1;/vni = null;/%eval-module%a wrongly typed settings value (null is no TOML value)%is not of type .TOML value.'
    'examples/nixos/guard-mode.nix%s/role = "server";/role = "master";/%eval-module%a k3s role NixOS does not know%is not of type .one of "server", "agent".'
    'nix/module.nix%0,/type = lib.types.bool;/s//type = lib.types.str;/%eval-module%checkConfig declared as a string: its default true is mistyped%is not of type .string.'
    'nix/module.nix%s/Type = "notify-reload";/Type = "notfy-reload";/%eval-module%a unit Type systemd does not know%is not of type .attribute set of \(systemd option\).'
    'nix/module.nix%s/environment.systemPackages = /environment.systemPackage = /%eval-module%a definition of an option NixOS does not have%The option .environment.systemPackage. does not exist'
    'nix/module.nix%/defaultText = lib.literalExpression "pkgs.netconverge/d%eval-module%package option without defaultText: the manual would show a store derivation%option docs render'
    'nix/module.nix%s/daemon.metrics = metricsListen;/daemon.metric = metricsListen;/%eval-module%services.netconverge.metrics no longer reaches [daemon] metrics%metrics.enable renders'
    'nix/module.nix%s/then "\[${a}\]" else a/then a else a/%eval-module%an IPv6 metrics.listenAddress rendered without brackets%metrics.enable renders'
    'nix/module.nix%s/TimeoutStartSec = lib.mkDefault (\(.*\));/TimeoutStartSec = \1;/%eval-module%TimeoutStartSec no longer mkDefault: a user override conflicts%conflicting definition values'
)

# A copy of the tree at $1/repo, with ../shared linked as it is beside
# $ROOT (CI: a clean clone with shared/ beside it).
copy_tree() {
    mkdir -p "$1/repo"
    (cd "$ROOT" && tar --exclude=./target --exclude=./.git --exclude=./result -cf - .) | tar -xf - -C "$1/repo"
    if [[ -d $ROOT/../shared ]]; then ln -s "$(realpath -- "$ROOT/../shared")" "$1/shared"; fi
}

self_test() {
    local failed=0 i=0 m file expr check what reason tree want
    echo "--- self-test: each broken copy must fail the check named"
    for m in "${MUTATIONS[@]}"; do
        i=$((i + 1))
        reason=
        IFS='%' read -r file expr check what reason <<<"$m"
        case $check in
            eval-module|eval-flake) want="^FAIL eval nix/tests/$check.nix" ;;
            *) want="^FAIL $check" ;;
        esac
        copy_tree "$work/mut$i"
        tree=$work/mut$i/repo
        sed -i "$expr" "$tree/$file"
        if cmp -s "$ROOT/$file" "$tree/$file"; then
            echo "FAIL self-test #$i: mutation '$expr' did not change $file; update the self-test"
            failed=1
            continue
        fi
        # Quietly: only the verdict matters here.
        if (check_all "$tree") >"$tree.log" 2>&1 || ! grep -q "$want" "$tree.log"; then
            echo "FAIL self-test #$i: check '$check' did NOT catch: $what"
            sed 's/^/       /' "$tree.log"
            failed=1
        elif [[ -n $reason ]] && ! grep -Eq -- "$reason" "$tree.log"; then
            echo "FAIL self-test #$i: check '$check' failed on '$what', but not with /$reason/:"
            sed 's/^/       /' "$tree.log"
            failed=1
        else
            echo "ok   self-test #$i: $check catches $what"
            if [[ -n $reason ]]; then
                grep -Eo -- ".{0,60}$reason.{0,40}" "$tree.log" | head -n 1 | sed 's/^ *//; s/^/       -> /'
            else
                grep -A2 "$want" "$tree.log" | grep -v '^--$' | head -n 3 | sed 's/^ *//; s/^/       -> /'
            fi
        fi
        rm -rf -- "$work/mut$i" "$tree.log"
    done
    # Without ../shared the check must fail, and say why.
    i=$((i + 1))
    copy_tree "$work/mut$i"
    rm -f -- "$work/mut$i/shared"
    if (check_all "$work/mut$i/repo") >"$work/mut$i.log" 2>&1 || ! grep -q '^FAIL nixpkgs-lib: .* is missing' "$work/mut$i.log"; then
        echo "FAIL self-test #$i: a tree without ../shared/vendor/nixpkgs-lib did NOT fail loudly"
        sed 's/^/       /' "$work/mut$i.log"
        failed=1
    else
        echo "ok   self-test #$i: nixpkgs-lib missing fails the check"
        grep '^FAIL nixpkgs-lib' "$work/mut$i.log" | cut -c1-120 | sed 's/^/       -> /'
    fi
    rm -rf -- "$work/mut$i" "$work/mut$i.log"
    return $failed
}

# Without the lib nothing can be checked, and the self-test would only
# repeat it: stop here.
if ! check_lib "$ROOT" >"$work/lib.log"; then
    cat "$work/lib.log"
    echo "FAILED check-nix"
    exit 1
fi

status=0
if [[ $self_test_only == 0 ]]; then
    echo "--- checking Nix files under $ROOT${bin:+ (binary: $bin)}"
    check_all "$ROOT" || status=1
else
    if (check_all "$ROOT") >"$work/baseline.log" 2>&1; then
        echo "ok   self-test baseline: the unmodified tree passes"
    else
        echo "FAIL self-test baseline: the unmodified tree already fails:"
        sed 's/^/       /' "$work/baseline.log"
        status=1
    fi
fi
self_test || status=1

if [[ $status == 0 ]]; then
    echo "PASS check-nix"
else
    echo "FAILED check-nix"
fi
exit $status
