#!/usr/bin/env bash
# One-step set-up: Debian tools (speech synthesis for the demo corpus, ffmpeg, Chromium for the
# browser tests) and a Python 3.11 virtual environment with the pinned requirements.
#   bash setup.sh                 # venv in .venv
#   SER_VENV=/path bash setup.sh  # venv elsewhere (CI reuses one between runs)
set -euo pipefail
cd "$(dirname "$0")"
VENV=${SER_VENV:-.venv}
PY=${PYTHON:-python3.11}

debs="espeak-ng sox festival festvox-us-slt-hts festvox-kallpc16k ffmpeg chromium libsndfile1"
missing=""
for cmd in espeak-ng sox text2wave ffmpeg chromium; do
  command -v "$cmd" >/dev/null 2>&1 || missing="$missing $cmd"
done
if [ -n "$missing" ]; then
  echo "setup: installing Debian packages (missing:$missing)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $debs >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.ser-requirements.sha256"
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing requirements (first time: ~4 GB for torch, a few minutes)"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -r requirements.txt
  echo "$want" > "$stamp"
else
  echo "setup: requirements already installed in $VENV"
fi
echo "setup: done. Next: source $VENV/bin/activate && streamlit run app.py"
