#!/usr/bin/env bash
# The add-on suite on every Blender the manifest promises (4.2 LTS to the newest 5.x), besides .venv's bpy 5.0.1
# (the full suite runs that one). Each bpy is a PyPI wheel in its own venv under .venvs/ (made once, then reused),
# with only what the add-on tests import: no torch. The servers the tests start (python -m server --model tiny)
# and the tiny model come from .venv, named by SPARSECTRL_SERVER_PYTHON.
#
#   bash tests/bpy_versions.sh            # every version below
#   bash tests/bpy_versions.sh 4.5.15     # one of them
#
# A version whose pytest process does not exit within BOUND seconds fails (the bpy module of 4.2.x and 4.5.x can
# crash or hang at exit: docs/troubleshooting.md). Prints one line per version: tests, exit status, wall time.
set -euo pipefail
cd "$(dirname "$0")/.."

# bpy version and the Python it is built for. Newest of each LTS line, and the newest 5.x (Python 3.13 only).
MATRIX=(4.2.23:3.11 4.5.15:3.11 5.2.3:3.13)
SUITE=(tests/addon tests/e2e/test_addon.py tests/e2e/test_addon_files.py tests/e2e/test_farm_files.py
       tests/e2e/test_extensions_repo.py)
PACKAGES=(pytest numpy pillow av httpx)  # what tests/addon and tests/e2e/test_addon*.py import besides bpy
BOUND=${BPY_VERSIONS_BOUND:-900}
SERVER_PYTHON=${SPARSECTRL_SERVER_PYTHON:-$PWD/.venv/bin/python}

find_python() {  # pythonX.Y on PATH, else pyenv's newest X.Y
    local want=$1 candidate
    for candidate in "python$want" "$(pyenv root 2>/dev/null)"/versions/"$want".*/bin/"python$want"; do
        if "$candidate" -c 'import sys' >/dev/null 2>&1; then
            command -v "$candidate" || echo "$candidate"
        fi
    done | sort -V | tail -n 1
}

venv_for() {  # .venvs/bpy-VERSION, made if missing or incomplete
    local version=$1 python_version=$2 venv=.venvs/bpy-$1 python
    if ! "$venv/bin/python" -c "import bpy, pytest, numpy, PIL, av, httpx; assert bpy.app.version_string.split()[0] == '$version'" >/dev/null 2>&1; then
        python=$(find_python "$python_version")
        if [[ -z $python ]]; then
            echo "no python$python_version for bpy $version" >&2
            return 1
        fi
        rm -rf "$venv"
        "$python" -m venv "$venv"
        "$venv/bin/pip" install -q "bpy==$version" "${PACKAGES[@]}" >&2
    fi
    echo "$venv"
}

versions=("$@")
if [[ ${#versions[@]} -eq 0 ]]; then
    for entry in "${MATRIX[@]}"; do versions+=("${entry%%:*}"); done
fi

summary=()
failed=0
for version in "${versions[@]}"; do
    python_version=""
    for entry in "${MATRIX[@]}"; do [[ ${entry%%:*} == "$version" ]] && python_version=${entry##*:}; done
    if [[ -z $python_version ]]; then
        echo "bpy $version is not in the matrix (${MATRIX[*]})" >&2
        exit 2
    fi
    venv=$(venv_for "$version" "$python_version")
    echo "== bpy $version (Python $python_version): ${SUITE[*]}"
    start=$(date +%s)
    log=$(mktemp)
    set +e
    SPARSECTRL_SERVER_PYTHON=$SERVER_PYTHON timeout -k 10 "$BOUND" \
        "$venv/bin/python" -m pytest -p no:cacheprovider "${SUITE[@]}" 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    set -e
    seconds=$(( $(date +%s) - start ))
    result=$(grep -E '^=+ .*(passed|failed|error).* in ' "$log" | tail -n 1 | sed -E 's/^=+ //; s/ in [0-9.]+s.*//')
    rm -f "$log"
    if [[ $status -eq 124 || $status -eq 137 ]]; then
        result="${result:-no summary}; did not exit within ${BOUND} s"
    fi
    summary+=("bpy $version (Python $python_version): ${result:-no summary}, exit $status, ${seconds} s")
    [[ $status -eq 0 ]] || failed=1
done

echo "== add-on suite per Blender version"
printf '%s\n' "${summary[@]}"
exit $failed
