#!/bin/sh
# Cargo's linker for aarch64-unknown-linux-gnu (.cargo/config.toml). Cross-compiling, that is
# Debian's cross gcc; on an aarch64 Linux host (a native build, e.g. `pip install` on Graviton
# or a GitHub arm64 runner) it is the host's own C compiler, whatever its distribution names it.
if [ "$(uname -m)" = aarch64 ]; then
    exec cc "$@"
fi
exec aarch64-linux-gnu-gcc "$@"
