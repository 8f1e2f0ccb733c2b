#!/usr/bin/env bash
# vendor/rhai is rhai as published on crates.io plus the patch series in vendor/rhai-patches
# (vendor/README.md describes each patch). This script keeps the two in step:
#
#   tools/rhai-patches.sh check         apply the series to the pristine crate and check that the
#                                       result is vendor/rhai, byte for byte (run by tools/test.sh)
#   tools/rhai-patches.sh apply         rebuild vendor/rhai from the pristine crate and the series
#   tools/rhai-patches.sh repo DIR      a git repository to edit the series in: tag `upstream` is
#                                       the pristine crate, then one commit per patch (git am)
#   tools/rhai-patches.sh export DIR    write the series from such a repository's commits after
#                                       `upstream` (git format-patch), then rebuild vendor/rhai
#   tools/rhai-patches.sh unpack DIR [VERSION]
#                                       the crate as Cargo unpacks it (default: the pinned version)
#
# The pristine crate comes from Cargo's download cache, fetched with `cargo fetch` in a throwaway
# project when it is not there, and is checked against the checksum crates.io publishes. What
# the unpacking leaves is what Cargo's own leaves (`.cargo-ok` included) but the crate's
# Cargo.lock, which Cargo ignores in a dependency.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VERSION=1.27.0
# From crates.io's index (the "cksum" of rhai 1.27.0); checked before the crate is used.
SHA256=c3925b784c0bee6542637e425ed7511a63257bf11b7ecf51ffd845e2d24d9163
SERIES=$ROOT/vendor/rhai-patches
VENDOR=$ROOT/vendor/rhai
# Fixed author and date, so that exporting an unchanged series writes the same bytes.
export GIT_AUTHOR_NAME=proxy-rhai GIT_AUTHOR_EMAIL=proxy-rhai@localhost
export GIT_COMMITTER_NAME=proxy-rhai GIT_COMMITTER_EMAIL=proxy-rhai@localhost
export GIT_AUTHOR_DATE='2000-01-01T00:00:00Z' GIT_COMMITTER_DATE='2000-01-01T00:00:00Z'

die() { echo "rhai-patches: $*" >&2; exit 1; }

# The path of rhai-$1.crate in Cargo's download cache, fetching it if needed.
crate_file() {
  local version=$1 home=${CARGO_HOME:-$HOME/.cargo} found
  found=$(find "$home/registry/cache" -name "rhai-$version.crate" 2>/dev/null | head -n 1)
  if [ -z "$found" ]; then
    local tmp
    tmp=$(mktemp -d)
    mkdir "$tmp/src" && : > "$tmp/src/lib.rs"
    printf '[package]\nname = "fetch-rhai"\nversion = "0.0.0"\nedition = "2021"\n\n[dependencies]\nrhai = "=%s"\n' \
      "$version" > "$tmp/Cargo.toml"
    (cd "$tmp" && cargo fetch --quiet) >&2
    rm -rf "$tmp"
    found=$(find "$home/registry/cache" -name "rhai-$version.crate" | head -n 1)
    [ -n "$found" ] || die "cargo fetch did not bring rhai-$version.crate"
  fi
  echo "$found"
}

# unpack DIR [VERSION]: the crate as Cargo unpacks it, in DIR (which must not exist).
unpack() {
  local dir=$1 version=${2:-$VERSION} crate tmp
  [ ! -e "$dir" ] || die "$dir exists"
  crate=$(crate_file "$version")
  if [ "$version" = "$VERSION" ]; then
    echo "$SHA256  $crate" | sha256sum --check --quiet - >&2 || die "$crate: wrong checksum"
  fi
  tmp=$(mktemp -d)
  tar -xzf "$crate" -C "$tmp"
  mv "$tmp/rhai-$version" "$dir"
  rmdir "$tmp"
  rm -f "$dir/Cargo.lock"
  printf '{"v":1}' > "$dir/.cargo-ok"
}

# Applies the series, in order, to the pristine crate in DIR. `git apply` outside any
# repository: exact, and fails on a patch that doesn't apply (no fuzz, no offsets).
apply_series() {
  local dir=$1 patch
  for patch in "$SERIES"/[0-9][0-9]-*.patch; do
    GIT_CEILING_DIRECTORIES=$(dirname "$dir") git -C "$dir" apply --whitespace=nowarn "$patch" \
      || die "$(basename "$patch") does not apply"
  done
}

# The series applied to the pristine crate, in a new temporary directory.
build_tree() {
  local tmp
  tmp=$(mktemp -d)
  unpack "$tmp/rhai"
  apply_series "$tmp/rhai"
  echo "$tmp"
}

case ${1:-} in
  check)
    tmp=$(build_tree)
    trap 'rm -rf "$tmp"' EXIT
    if ! diff -r "$tmp/rhai" "$VENDOR" > "$tmp/diff"; then
      head -n 40 "$tmp/diff" >&2
      die "vendor/rhai is not rhai $VERSION with vendor/rhai-patches applied" \
        "(tools/rhai-patches.sh apply rebuilds it; vendor/README.md says how to change a patch)"
    fi
    echo "vendor/rhai is rhai $VERSION + $(ls "$SERIES"/[0-9][0-9]-*.patch | wc -l) patches"
    ;;
  apply)
    tmp=$(build_tree)
    trap 'rm -rf "$tmp"' EXIT
    rm -rf "$VENDOR"
    mv "$tmp/rhai" "$VENDOR"
    echo "rebuilt vendor/rhai: rhai $VERSION + $(ls "$SERIES"/[0-9][0-9]-*.patch | wc -l) patches"
    ;;
  repo)
    dir=${2:?usage: $0 repo DIR}
    unpack "$dir"
    git -C "$dir" init --quiet --initial-branch=series
    git -C "$dir" add --all
    git -C "$dir" commit --quiet --message "rhai $VERSION as published"
    git -C "$dir" tag upstream
    git -C "$dir" am --quiet --keep-cr --quoted-cr=nowarn --whitespace=nowarn "$SERIES"/[0-9][0-9]-*.patch
    echo "$dir: tag upstream = rhai $VERSION, then $(git -C "$dir" rev-list --count upstream..HEAD) patches"
    ;;
  export)
    dir=${2:?usage: $0 export DIR}
    git -C "$dir" diff --quiet HEAD || die "$dir has uncommitted changes"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    git -C "$dir" format-patch --quiet --zero-commit --no-signature --no-numbered \
      --output-directory "$tmp" upstream..HEAD
    rm -f "$SERIES"/[0-9][0-9]-*.patch
    for f in "$tmp"/*.patch; do
      # The subject names the file: "Rhai patch NN (name): ..." -> NN-name.patch.
      name=$(sed -n 's/^Subject: \[PATCH\] Rhai patch \([0-9][0-9]\) (\([a-z0-9-]*\)):.*/\1-\2.patch/p' "$f")
      [ -n "$name" ] || die "$(basename "$f"): subject is not \"Rhai patch NN (name): ...\""
      cp "$f" "$SERIES/$name"
    done
    "$0" apply
    # What the repository's tip holds is what the series gives, or a commit was left out.
    diff -r --exclude=.git "$dir" "$VENDOR" > /dev/null || die "$dir differs from the series it exported"
    ;;
  unpack)
    unpack "${2:?usage: $0 unpack DIR [VERSION]}" "${3:-$VERSION}"
    ;;
  *)
    sed -n '2,18s/^# \{0,1\}//p' "$0"
    exit 2
    ;;
esac
