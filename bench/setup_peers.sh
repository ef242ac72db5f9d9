#!/bin/sh
# Install the peers that bench/peers.py measures culm against into their own virtual
# environment, bench/.venv-peers (none of them is a dependency of culm; they never enter .venv):
# the OpenAI Agents SDK, pydantic-ai (slim, with its OpenAI model), LangGraph with its SQLite
# checkpointer and langchain-openai, and langgraph-cli[inmem] for `langgraph dev`.
#
#   bench/setup_peers.sh                       # the versions pinned below, and every package
#                                              # under them as bench/peers-constraints.txt says
#   PEERS_LATEST=1 bench/setup_peers.sh        # the newest from the configured index instead
#   PYTHON=python3.12 bench/setup_peers.sh     # another interpreter for the venv
#
# Uses pip's own configuration (indexes) as it is. The pins are the versions docs/benchmarks.md
# reports figures for; change both together.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
venv="${PEERS_VENV:-$here/.venv-peers}"
python="${PYTHON:-python3}"

if [ -n "${PEERS_LATEST:-}" ]; then
    specs="openai-agents pydantic-ai-slim[openai] langgraph langgraph-checkpoint-sqlite
        langchain-openai langgraph-cli[inmem]"
else
    # The whole dependency set, not only the peers: their own dependencies (openai, pydantic,
    # httpx …) would otherwise resolve afresh at each set-up.
    specs="-c $here/peers-constraints.txt openai-agents==0.24.0
        pydantic-ai-slim[openai]==2.68.0 langgraph==1.2.24
        langgraph-checkpoint-sqlite==3.1.2 langchain-openai==1.8.1
        langgraph-cli[inmem]==0.4.40"
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "creating $venv with $python" >&2
    "$python" -m venv "$venv"
fi
echo "installing the peers into $venv (a few minutes the first time)" >&2
# shellcheck disable=SC2086  # the specs are words on purpose
"$venv/bin/pip" install --quiet --disable-pip-version-check $specs
"$venv/bin/python" - <<'PY'
import importlib.metadata as m

for name in ("openai-agents", "pydantic-ai-slim", "langgraph", "langgraph-checkpoint-sqlite",
             "langchain-openai", "langgraph-cli", "langgraph-api", "openai", "httpx"):
    try:
        print(name, m.version(name))
    except m.PackageNotFoundError:
        print(name, "missing")
PY
