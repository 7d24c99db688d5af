#!/usr/bin/env bash
# Make the linux corpus searchable by gitignore-aware tools, for benchmarks/search_vs_ripgrep.py.
#
# The pinned corpus is Debian's linux-source-6.1, whose top-level .gitignore ends with Debian's
# packaging stanza ("/*" then "!/debian/"): Lens and ripgrep both honour it and skip the whole kernel.
# This copies the tree without that stanza (every other ignore rule is kept) into DEST, as a git
# repository with one commit (fixed author and date, like fetch.sh), and prints DEST.
#
#   bash benchmarks/prepare_linux.sh [DEST]        # default DEST: /tmp/lens-linux
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(bash "$here/../../shared/corpora/fetch.sh" linux | tail -n 1)
dest=${1:-/tmp/lens-linux}
rm -rf "$dest"
mkdir -p "$dest"
cp -a "$src/linux-source-6.1/." "$dest/"
python3 - "$dest/.gitignore" <<'PY'
import sys
path = sys.argv[1]
text = open(path, encoding="utf-8").read()
cut = text.index("# Debian packaging")
start = text.rindex("#\n", 0, cut)  # the stanza's opening "#" line
open(path, "w", encoding="utf-8").write(text[:start])
PY
export GIT_AUTHOR_NAME=corpus GIT_AUTHOR_EMAIL=corpus@localhost GIT_COMMITTER_NAME=corpus \
  GIT_COMMITTER_EMAIL=corpus@localhost GIT_AUTHOR_DATE=2026-01-01T00:00:00Z GIT_COMMITTER_DATE=2026-01-01T00:00:00Z
git -C "$dest" init -q -b main
git -C "$dest" add -A
git -C "$dest" -c commit.gpgsign=false commit -q -m "linux-source-6.1 without Debian's top-level ignore stanza"
echo "$dest"
