#!/usr/bin/env bash
# install.sh [--uninstall]: builds and installs, or removes,
#   PREFIX/bin/rgtp-expose, rgtp-pull, rgtp-run
#   PREFIX/lib/librgtp_shim.so                         (where rgtp-run finds it)
#   PREFIX/share/man/man1/rgtp-expose.1, rgtp-pull.1    (generated from --help's source)
#   PREFIX/share/bash-completion/completions/rgtp-expose, rgtp-pull
#   PREFIX/share/zsh/site-functions/_rgtp-expose, _rgtp-pull
#   PREFIX/share/fish/vendor_completions.d/rgtp-expose.fish, rgtp-pull.fish
# PREFIX defaults to /usr/local. (`cargo install --path core/cli` gives only the two
# commands: it cannot install the shim, a cdylib, nor the man pages or completions.)
# Honours CARGO_TARGET_DIR (the binaries are taken from where cargo put them).
# An example systemd unit for an exposer is in docs/rgtp-expose.service.
set -euo pipefail
if [[ -n ${CARGO_TARGET_DIR:-} && $CARGO_TARGET_DIR != /* ]]; then export CARGO_TARGET_DIR=$PWD/$CARGO_TARGET_DIR; fi
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/usr/local}
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release
CLIS=(rgtp-expose rgtp-pull)

files() { # every path this script installs, relative to PREFIX
  local c
  echo bin/rgtp-run lib/librgtp_shim.so
  for c in "${CLIS[@]}"; do
    echo "bin/$c share/man/man1/$c.1 share/bash-completion/completions/$c" \
      "share/zsh/site-functions/_$c share/fish/vendor_completions.d/$c.fish"
  done
}

case ${1:-} in
  --uninstall)
    removed=()
    for f in $(files); do
      if [[ -e $PREFIX/$f || -L $PREFIX/$f ]]; then
        rm -f "$PREFIX/$f"
        removed+=("$f")
      fi
    done
    echo "removed from $PREFIX: ${removed[*]:-nothing (not installed there)}"
    exit 0
    ;;
  "") ;;
  *)
    echo "usage: scripts/install.sh [--uninstall]   (PREFIX=$PREFIX)" >&2
    exit 2
    ;;
esac

echo "building (release): rgtp-expose, rgtp-pull, rgtp-run, librgtp_shim.so (a few minutes the first time)"
cargo build --release -p rgtp-cli -p rgtp-shim
install -d "$PREFIX/bin" "$PREFIX/lib" "$PREFIX/share/man/man1" \
  "$PREFIX/share/bash-completion/completions" "$PREFIX/share/zsh/site-functions" \
  "$PREFIX/share/fish/vendor_completions.d"
install -m 0755 "$BIN/rgtp-expose" "$BIN/rgtp-pull" "$BIN/rgtp-run" "$PREFIX/bin/"
install -m 0755 "$BIN/librgtp_shim.so" "$PREFIX/lib/"
for c in "${CLIS[@]}"; do
  "$BIN/$c" --man >"$PREFIX/share/man/man1/$c.1"
  "$BIN/$c" --completions bash >"$PREFIX/share/bash-completion/completions/$c"
  "$BIN/$c" --completions zsh >"$PREFIX/share/zsh/site-functions/_$c"
  "$BIN/$c" --completions fish >"$PREFIX/share/fish/vendor_completions.d/$c.fish"
done
chmod 0644 "$PREFIX"/share/man/man1/rgtp-*.1 "$PREFIX"/share/bash-completion/completions/rgtp-* \
  "$PREFIX"/share/zsh/site-functions/_rgtp-* "$PREFIX"/share/fish/vendor_completions.d/rgtp-*.fish
echo "installed into $PREFIX: $(files | tr '\n' ' ')"
echo "(scripts/install.sh --uninstall removes them)"
