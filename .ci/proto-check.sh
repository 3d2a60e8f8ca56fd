#!/usr/bin/env bash
# Contract checks for proto/: `buf lint`, `buf build`, and `buf breaking` against the
# newest release tag `v<digit>...` (skipped, with a note, while there is none). Exits
# non-zero on the first failure. buf comes from .ci/tools.sh (installed on first use).
# Tags sort by version with `-...` suffixes as pre-releases (v1.2.0 > v1.2.0-rc.1).
# A clone without tags (e.g. shallow CI checkout) has no baseline: fetch tags first.
set -euo pipefail

root="$(CDPATH='' cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
# shellcheck source=tools.sh
source "$root/.ci/tools.sh"
cd "$root/proto"

echo "buf $(buf --version): lint"
buf lint

echo "buf build"
buf build

latest=""
if git -C "$root" rev-parse --git-dir >/dev/null 2>&1; then
  tags="$(git -C "$root" -c versionsort.suffix=- tag --list 'v[0-9]*' --sort=-version:refname)"
  latest="${tags%%$'\n'*}"
fi
if [[ -n "$latest" ]]; then
  echo "buf breaking against tag $latest"
  buf breaking --against "../.git#tag=${latest},subdir=proto"
else
  echo "buf breaking: skipped, no v* release tag yet to serve as the baseline"
fi
