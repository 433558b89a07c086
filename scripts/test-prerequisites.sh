#!/usr/bin/env bash
# The system packages the test suite needs besides Python: the one list, shared by `make test`
# and .ci/run. The tests start real services (DESIGN.md §5), so without these packages dozens of
# tests would fail one by one; this stops first, in well under a second, before any Python work.
#
#   scripts/test-prerequisites.sh          missing packages are installed when running as root
#                                          with apt-get (a fresh CI machine or container);
#                                          otherwise it prints the one command to run, exits 1
#   scripts/test-prerequisites.sh --sudo   also installs through sudo when not root (.ci/run)
#
# PYTHON is the interpreter `make` bootstraps with (default python3). PREREQUISITES_ROOT
# prefixes the fixed paths looked at (nginx, its njs module, PostgreSQL, the registry, htpasswd,
# prometheus, amtool, jq):
# the tests point it at an empty directory to simulate a machine without them.
set -euo pipefail

python="${PYTHON:-python3}"
root="${PREREQUISITES_ROOT:-}"
use_sudo=0
case "${1:-}" in
  "") ;;
  --sudo) use_sudo=1 ;;
  *) echo "usage: $0 [--sudo]" >&2; exit 2 ;;
esac

# apt cannot fix the interpreter's version, so this is reported on its own.
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
  echo "secure_pipeline needs Python >= 3.11 as $python (set PYTHON=... to use another)" >&2
  exit 1
fi

missing=()
why=()
need() {
  missing+=("$1")
  why+=("  $1: $2")
}

check() {
  missing=()
  why=()
  command -v make >/dev/null 2>&1 || need make "runs every step"
  # Debian's python3 ships venv/ensurepip separately; `make` bootstraps uv in a venv.
  "$python" -c "import ensurepip, venv" >/dev/null 2>&1 \
    || need python3-venv "make bootstraps uv in a virtual environment"
  # The gateway tests start a real nginx, whose njs module reads client identities. The module
  # is looked for where this nginx loads modules from, as the gateway itself does.
  local nginx modules
  nginx="$(command -v nginx || true)"
  if [ -z "$nginx" ] && [ -x "$root/usr/sbin/nginx" ]; then
    nginx="$root/usr/sbin/nginx"
  fi
  modules="$root/usr/lib/nginx/modules"
  if [ -n "$nginx" ]; then
    modules="$("$nginx" -V 2>&1 | sed -n 's/.*--modules-path=\([^ ]*\).*/\1/p')"
    modules="${modules:-$root/usr/lib/nginx/modules}"
  else
    need nginx "the inference gateway tests start a real nginx"
  fi
  [ -f "$modules/ngx_http_js_module.so" ] \
    || need libnginx-mod-http-js "the gateway's njs module reads client identities"
  # The production end-to-end test starts a real PostgreSQL server (Debian's package).
  compgen -G "$root/usr/lib/postgresql/*/bin/initdb" >/dev/null \
    || need postgresql "the production end-to-end test starts a PostgreSQL server"
  # The evidence tests check every DSSE envelope with OpenSSL, a verifier independent of ours.
  command -v openssl >/dev/null 2>&1 \
    || need openssl "the evidence tests check signatures with an independent verifier"
  # The OCI tests push to and pull from a real distribution registry, behind basic auth whose
  # bcrypt password file htpasswd writes (the registry accepts no other hash).
  command -v docker-registry >/dev/null 2>&1 || [ -x "$root/usr/bin/docker-registry" ] \
    || need docker-registry "the OCI tests start a real distribution registry"
  command -v htpasswd >/dev/null 2>&1 || [ -x "$root/usr/bin/htpasswd" ] \
    || need apache2-utils "htpasswd -B writes the test registry's password file"
  # The monitoring tests check the alert rules with promtool, fire them in a real Prometheus
  # and check the Alertmanager example with amtool.
  command -v prometheus >/dev/null 2>&1 || [ -x "$root/usr/bin/prometheus" ] \
    || need prometheus "the monitoring tests run promtool and a real Prometheus"
  command -v amtool >/dev/null 2>&1 || [ -x "$root/usr/bin/amtool" ] \
    || need prometheus-alertmanager "amtool checks the Alertmanager example"
  command -v jq >/dev/null 2>&1 || [ -x "$root/usr/bin/jq" ] \
    || need jq "the monitoring tests run the README's slot-targets command"
}

check
[ "${#missing[@]}" -eq 0 ] && exit 0

uid="$(id -u)"
can_install=0
if command -v apt-get >/dev/null 2>&1; then
  if [ "$uid" -eq 0 ]; then
    can_install=1
  elif [ "$use_sudo" -eq 1 ] && command -v sudo >/dev/null 2>&1; then
    can_install=1
  fi
fi
if [ "$can_install" -eq 1 ]; then
  as_root=()
  [ "$uid" -eq 0 ] || as_root=(sudo)
  echo "installing the Debian packages the tests need: ${missing[*]}" >&2
  "${as_root[@]}" apt-get update -qq
  # Quiet: apt's progress would bury the test output; its errors still reach stderr.
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq "${missing[@]}" >/dev/null
  check
  [ "${#missing[@]}" -eq 0 ] && exit 0
  echo "still missing after apt-get install: ${missing[*]}" >&2
  exit 1
fi

sudo=""
[ "$uid" -eq 0 ] || sudo="sudo "
{
  echo "the tests need Debian packages this machine does not have:"
  printf '%s\n' "${why[@]}"
  echo "install them, then run make test again:"
  echo
  echo "  ${sudo}apt-get install -y ${missing[*]}"
  echo
} >&2
exit 1
