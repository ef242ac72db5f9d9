#!/usr/bin/env bash
# Mutation-test one part of the core against a narrow test selection (docs/testing.md, "Scores").
#
#   scripts/mutation-module.sh NAME 'SOURCE GLOBS' 'TEST PATHS' [MUTANT NAMES...]
#   scripts/mutation-module.sh taps 'src/culm/proxy/taps.py' 'tests/proxy/test_taps.py'
#
# Works in a copy of the tree ($MUTATION_DIR/NAME, default /tmp/culm-mutation/NAME) whose
# [tool.mutmut] only_mutate and pytest_add_cli_args_test_selection are replaced, so that each
# mutant runs only the covering tests of the selection. Re-running keeps earlier results;
# naming mutants re-checks just those (after new tests, say). Always at nice 19, one child.
set -euo pipefail
name=$1 only=$2 tests=$3
shift 3
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${MUTATION_DIR:-/tmp/culm-mutation}/$name
mkdir -p "$dir"
rsync -a --delete "$root/src" "$root/tests" "$root/docs" "$dir/"
cp "$root/README.md" "$dir/"
"$root/.venv/bin/python" - "$root/pyproject.toml" "$only" "$tests" > "$dir/pyproject.toml" <<'PY'
import re
import sys

text = open(sys.argv[1]).read()
for key, values in (("only_mutate", sys.argv[2]), ("pytest_add_cli_args_test_selection", sys.argv[3])):
    listed = "".join(f'    "{value}",\n' for value in values.split())
    text = re.sub(rf"{key} = \[.*?\]", f"{key} = [\n{listed}]", text, count=1, flags=re.S)
print(text, end="")
PY
cd "$dir"
nice -n 19 "$root/.venv/bin/mutmut" run --max-children 1 "$@"
"$root/.venv/bin/mutmut" results
