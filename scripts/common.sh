# Shared by scripts/test and scripts/demo (sourced, not run).

# Installs the given Debian packages that are missing (apt-get update once, first, and only if
# something is missing). Non-interactive; uses sudo when not root.
baton_install_packages() {
  local missing=() p
  for p in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$p")
    fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "error: missing packages (${missing[*]}) and neither root nor sudo" >&2
      return 1
    fi
    sudo=(sudo)
  fi
  echo "== installing: ${missing[*]}"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q || return 1
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" || return 1
}

BATON_ALL_PACKAGES=(cmake ninja-build g++ clang libclang-rt-14-dev libboost1.81-dev googletest libgtest-dev
                    libbenchmark-dev libsystemd-dev systemd util-linux wine g++-mingw-w64-x86-64-posix wrk curl)
BATON_LINUX_PACKAGES=(cmake ninja-build g++ libboost1.81-dev googletest libgtest-dev libbenchmark-dev libsystemd-dev systemd util-linux)

# The Wine prefix the windows preset uses (cmake/toolchains/mingw-w64-wine.cmake).
BATON_WINEPREFIX="$HOME/.cache/baton/wineprefix"
