#!/bin/sh
# Cargo's runner for aarch64-unknown-linux-gnu (.cargo/config.toml): QEMU user mode when
# cross-compiling, with the CPU model from QFAST_QEMU_CPU (default `max`, which has dotprod;
# `cortex-a53` is plain NEON); the binary itself on an aarch64 host.
if [ "$(uname -m)" = aarch64 ]; then
    exec "$@"
fi
exec qemu-aarch64-static -cpu "${QFAST_QEMU_CPU:-max}" -L /usr/aarch64-linux-gnu "$@"
