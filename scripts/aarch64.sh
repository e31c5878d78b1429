#!/usr/bin/env bash
# The kernel tests (tests/kernels.rs) for aarch64, cross-compiled and run under QEMU user mode:
#
#   -cpu max         NEON with dotprod: the `neon` and `neon-dotprod` paths must both run
#   -cpu cortex-a53  plain NEON:        the `neon` path runs, `neon-dotprod` must not
#
# Installs what is missing first (Debian/Ubuntu, apt): the cross linker and C library, QEMU,
# and, unless the rustc on PATH already has the aarch64 standard library (rustup with
# `rustup target add aarch64-unknown-linux-gnu`), Debian's rustc/cargo with the arm64 std.
# When everything is present a re-run touches neither apt nor the network. On an aarch64 Linux
# host it runs the tests once, natively.
#
# Usage: scripts/aarch64.sh            (from anywhere; `make check-aarch64` runs it)
# Env:   QFAST_AARCH64_PROFILE=release|debug   (default release: faster overall under QEMU)
#        QFAST_AARCH64_TIMEOUT=seconds         (per QEMU run, default 900; a hang fails)
#        QFAST_AARCH64_RUST=auto|debian|path   (whose rustc: Debian's /usr/bin one, the one on
#                                               PATH, or auto: Debian's unless only PATH's
#                                               has the aarch64 std)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

TARGET=aarch64-unknown-linux-gnu
SYSROOT=/usr/aarch64-linux-gnu
TARGET_DIR=target/aarch64
PROFILE=${QFAST_AARCH64_PROFILE:-release}
TIMEOUT=${QFAST_AARCH64_TIMEOUT:-900}

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'scripts/aarch64.sh: %s\n' "$*" >&2; exit 1; }

case $PROFILE in
    release) profile_flag=(--release) ;;
    debug) profile_flag=() ;;
    *) die "QFAST_AARCH64_PROFILE must be release or debug, not '$PROFILE'" ;;
esac

log=$(mktemp)
trap 'rm -f "$log"' EXIT

# Whether the test program reported a path as passed: a line that is its name, then `ok`
# (`neon          ok: ...`; the name must be followed by blanks, so `neon` is not `neon-dotprod`).
ran_path() { grep -Eq "^[[:space:]]*$1:?[[:space:]]+ok" "$log"; }

# On an aarch64 Linux host there is nothing to emulate: one native run, on this CPU's paths.
if [ "$(uname -s)-$(uname -m)" = Linux-aarch64 ]; then
    say "aarch64 host: running tests/kernels.rs natively"
    cargo test --locked --no-default-features "${profile_flag[@]}" --test kernels 2>&1 |
        tee "$log" || die "kernel tests FAILED"
    ran_path neon || die "no 'neon' line in the test output; the NEON path did not run"
    say "aarch64 OK (native)"
    exit 0
fi

# --- what is there ----------------------------------------------------------------------------

# The rustc on PATH (rustup's, usually) when it can build for the target; else Debian's.
path_rustc_has_target() {
    command -v rustc >/dev/null && command -v cargo >/dev/null || return 1
    local sysroot
    sysroot=$(rustc --print sysroot 2>/dev/null) || return 1
    [ -d "$sysroot/lib/rustlib/$TARGET/lib" ]
}
debian_rust_ready() {
    [ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ] && [ -d "/usr/lib/rustlib/$TARGET/lib" ]
}
cross_tools_ready() {
    command -v aarch64-linux-gnu-gcc >/dev/null &&
        command -v qemu-aarch64-static >/dev/null &&
        [ -e "$SYSROOT/lib/ld-linux-aarch64.so.1" ] &&
        [ -e "$SYSROOT/lib/crt1.o" ]
}

# --- install what is missing --------------------------------------------------------------------

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

apt_install() {
    command -v apt-get >/dev/null || die "missing $*, and no apt-get to install them with"
    say "installing: $*"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

case ${QFAST_AARCH64_RUST:-auto} in
    debian) use_debian_rust=1 ;;
    path)
        path_rustc_has_target ||
            die "the rustc on PATH has no $TARGET std (rustup target add $TARGET)"
        use_debian_rust=0
        ;;
    auto)
        if path_rustc_has_target && ! debian_rust_ready; then
            use_debian_rust=0
        else
            use_debian_rust=1
        fi
        ;;
    *) die "QFAST_AARCH64_RUST must be auto, debian or path, not '$QFAST_AARCH64_RUST'" ;;
esac

missing=()
if ! cross_tools_ready; then
    missing+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static)
fi
if [ "$use_debian_rust" = 1 ] && ! debian_rust_ready; then
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        say "adding the arm64 architecture to dpkg"
        as_root dpkg --add-architecture arm64
    fi
    missing+=(rustc-web cargo-web libstd-rust-web-dev:arm64)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
    cross_tools_ready || die "the cross linker, C library or QEMU is still missing after apt"
    if [ "$use_debian_rust" = 1 ]; then
        debian_rust_ready || die "Debian's rustc/cargo with the arm64 std still missing after apt"
    fi
fi

if [ "$use_debian_rust" = 1 ]; then
    # rustup's cargo/rustc stay first on PATH for everything else; Debian's cargo must be told
    # to use Debian's rustc, or it picks rustup's, which has no aarch64 std.
    CARGO=/usr/bin/cargo
    export RUSTC=/usr/bin/rustc
else
    CARGO=cargo
    unset RUSTC
fi
say "toolchain: $("${RUSTC:-rustc}" --version) ($CARGO), $PROFILE profile, $TARGET_DIR"

# --- build once, run under two CPUs ----------------------------------------------------------

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# The test program must not start threads: QEMU user mode hangs on them here. The timeout
# turns such a hang into a failure.
runner() { echo "timeout $TIMEOUT qemu-aarch64-static -cpu $1 -L $SYSROOT"; }

cargo_test() {
    "$CARGO" test --locked --target "$TARGET" --target-dir "$TARGET_DIR" \
        --no-default-features "${profile_flag[@]}" --test kernels "$@"
}

say "building tests/kernels.rs for $TARGET"
cargo_test --no-run

# Runs the kernel tests under one QEMU CPU model; the output stays in $log.
run_under() {
    local cpu=$1
    say "running under qemu-aarch64 -cpu $cpu"
    if ! CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=$(runner "$cpu") cargo_test 2>&1 |
        tee "$log"; then
        die "kernel tests FAILED under -cpu $cpu"
    fi
}

run_under max
ran_path neon || die "-cpu max: no 'neon' line in the test output; the NEON path did not run"
ran_path neon-dotprod ||
    die "-cpu max: no 'neon-dotprod' line in the test output; dotprod was not detected"

run_under cortex-a53
ran_path neon || die "-cpu cortex-a53: no 'neon' line in the test output"
if ran_path neon-dotprod; then
    die "-cpu cortex-a53 has no dotprod, yet the 'neon-dotprod' path ran: detection is wrong"
fi

say "aarch64 OK: neon + neon-dotprod (-cpu max), neon without dotprod (-cpu cortex-a53)"
