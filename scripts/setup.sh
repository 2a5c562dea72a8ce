#!/usr/bin/env bash
# Installs what building and testing Trellis needs, and only what is missing:
#   - g++ (its C++ standard library), clang (.cargo/config.toml compiles RocksDB's C++ and
#     torch-sys's shim with clang++, about twice as fast as g++) and libclang (RocksDB's bindings);
#   - a Python virtualenv with torch==2.11.0 (libtorch for tch), at $VENV (default: .venv);
#   - $VENV/libtorch, a link to that torch's directory, which .cargo/config.toml points LIBTORCH at.
# Safe to run again: each step checks first.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
venv=${1:-${VENV:-$root/.venv}}
torch_version=2.11.0

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }
die() { printf '\033[31m[setup] error:\033[0m %s\n' "$*" >&2; exit 1; }

command -v cargo >/dev/null || die "cargo not found. Install Rust with rustup (https://rustup.rs), then run this again."
command -v python3 >/dev/null || die "python3 not found. Install Python 3 (for example: apt-get install python3), then run this again."

# rustfmt and clippy (`make lint`, CI), when rustup manages the toolchain and they are missing.
if command -v rustup >/dev/null && ! { cargo fmt --version && cargo clippy --version; } >/dev/null 2>&1; then
  say "adding the rustfmt and clippy components"
  rustup component add rustfmt clippy
fi

# System packages, through apt, only when something is missing.
missing=()
command -v c++ >/dev/null || missing+=(g++)
command -v clang++ >/dev/null || missing+=(clang)
if ! ls /usr/lib/llvm-*/lib/libclang*.so* /usr/lib/*/libclang*.so* >/dev/null 2>&1; then missing+=(libclang-dev); fi
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then missing+=(python3-venv); fi
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get here: install them with your package manager."
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "missing ${missing[*]}: run 'apt-get install ${missing[*]}' as root."
    sudo="sudo"
  fi
  say "installing system packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The virtualenv with PyTorch, whose libtorch tch links against.
if ! "$venv/bin/python" -c "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '$torch_version')" >/dev/null 2>&1; then
  say "creating $venv with torch==$torch_version (about 4.7 GB with its CUDA libraries; downloaded once)"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --disable-pip-version-check -q --upgrade pip
  "$venv/bin/python" -m pip install --disable-pip-version-check "torch==$torch_version"
fi
# numpy only silences torch's "Failed to initialize NumPy" warning in the Python baseline benchmark.
if ! "$venv/bin/python" -c 'import numpy' >/dev/null 2>&1; then
  "$venv/bin/python" -m pip install --disable-pip-version-check -q numpy
fi
torch_dir=$("$venv/bin/python" -c 'import torch, os; print(os.path.dirname(torch.__file__))' 2>/dev/null)
[ -f "$torch_dir/lib/libtorch_cpu.so" ] || die "torch in $venv has no lib/libtorch_cpu.so; remove $venv and run again."
ln -sfn "$torch_dir" "$venv/libtorch"

say "ready: libtorch $torch_version at $venv/libtorch"
