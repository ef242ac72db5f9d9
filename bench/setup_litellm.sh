#!/bin/sh
# Install LiteLLM's proxy into its own virtual environment, bench/.venv-litellm, for
# bench/proxy_overhead.py only (LiteLLM is not a dependency of culm and never enters .venv).
#
#   bench/setup_litellm.sh                     # latest litellm[proxy] from the configured index
#   LITELLM_VERSION=1.106.2 bench/setup_litellm.sh   # a given version
#   PYTHON=python3.12 bench/setup_litellm.sh   # another interpreter for the venv
#
# Uses pip's own configuration (indexes) as it is. Re-running keeps the installed version
# (set LITELLM_VERSION to change it).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
venv="${LITELLM_VENV:-$here/.venv-litellm}"
python="${PYTHON:-python3}"
spec="litellm[proxy]"
if [ -n "${LITELLM_VERSION:-}" ]; then
    spec="litellm[proxy]==$LITELLM_VERSION"
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "creating $venv with $python" >&2
    "$python" -m venv "$venv"
fi
echo "installing $spec into $venv (a few minutes the first time)" >&2
"$venv/bin/pip" install --quiet --disable-pip-version-check "$spec"
"$venv/bin/python" -c 'import importlib.metadata as m; print("litellm", m.version("litellm"))'
