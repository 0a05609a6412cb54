#!/usr/bin/env bash
#
# Build a fully static CPython 3.11 linked against musl libc, for pipfix's
# end-to-end tests.
#
# Why
#   In a statically linked interpreter dlopen(NULL) fails with "Dynamic loading
#   not supported".  Upstream ctypes calls PyDLL(None) when it is imported, and
#   the pip/setuptools wheels bundled with ensurepip call ctypes.CDLL(None)
#   without guarding against that, so `python -m venv` crashes.  pipfix repairs
#   those wheels; its tests need a real interpreter that shows the bug.
#
# What
#   Upstream CPython 3.11 (Debian's orig tarball, deliberately WITHOUT Debian's
#   patches, which change ensurepip and sysconfig), zlib and libffi, all built
#   with musl-gcc into one non-PIE static executable with every available stdlib
#   extension module linked in.  That single build is installed into two
#   relocatable prefixes:
#     upstream-ctypes/  ctypes exactly as upstream ships it:
#                       `import ctypes` raises OSError.
#     pbs-ctypes/       ctypes patched the way python-build-standalone does it
#                       (pythonapi = None when PyDLL(None) fails): `import ctypes`
#                       works and ctypes.CDLL(None) raises OSError.
#   Both contain the wheels upstream CPython 3.11.2 bundles with ensurepip
#   (pip 22.3.1 and setuptools 65.5.0), and in both `python3 -m venv` fails.
#
# Output
#   The last line on stdout is the absolute path of the cache directory that
#   holds upstream-ctypes/ and pbs-ctypes/ (plus logs/ and build-info.txt).
#   Everything else goes to stderr or to log files.
#
# Cache
#   ${PIPFIX_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pipfix-e2e}/static-musl-<key>/
#   <key> is the first 16 hex digits of a sha256 over this script's content and
#   the upstream tarballs of the source packages (file name, size and SHA256, as
#   listed by `apt-get source --print-uris`).  That listing comes from the local
#   apt Sources index, so computing the key needs no network and takes about a
#   second.  Since Debian's patches are not applied, those tarballs are exactly
#   the inputs of the build: a Debian-only revision bump does not invalidate the
#   cache.  Builds happen in a temporary sibling directory that is renamed into
#   place only once complete and verified; the `.complete` marker is written
#   last, so an interrupted build never leaves a usable-looking cache behind.
#
# Requirements
#   Debian 12 (bookworm) on amd64 (other Debian releases/architectures are
#   untested).  Root is needed the first time, to install packages and enable
#   deb-src; a cache hit needs neither once the apt Sources index exists.
#   Network: the Debian archive, and PyPI only if the orig tarball lacks the
#   bundled wheels.
#
# Environment
#   PIPFIX_E2E_CACHE        cache root (see above)
#   PIPFIX_E2E_JOBS         parallel make jobs (default: 2)
#   PIPFIX_E2E_KEEP_FAILED  set to 1 to keep the work directory of a failed build

set -euo pipefail -o errtrace
shopt -s inherit_errexit

SCRIPT_PATH=$(realpath "${BASH_SOURCE[0]}")
readonly SCRIPT_PATH
readonly SCRIPT_NAME=${SCRIPT_PATH##*/}

# Debian source packages; only their upstream (orig) tarballs are used.
readonly PYTHON_SOURCE=python3.11
readonly SOURCE_PACKAGES=("$PYTHON_SOURCE" libffi zlib)
readonly PY_VERSION=3.11

# ensurepip's bundled wheels in upstream CPython 3.11.2.
readonly -A BUNDLED_WHEEL_SHA256=(
    ['pip-22.3.1-py3-none-any.whl']=908c78e6bc29b676ede1c4d57981d490cb892eb45cd8c214ab6298125119e077
    ['setuptools-65.5.0-py3-none-any.whl']=f62ea9da9ed6289bfe868cd6845968a2c854d1427f8548d52cae02a42b4f0356
)

# --prefix given to configure.  The installed trees are relocatable (CPython
# finds its stdlib relative to the executable), so this path only shows up in
# sysconfig data and script shebangs; nothing is ever installed there.
readonly BUILD_PREFIX=/opt/python$PY_VERSION-static-musl

# Stdlib modules that must be compiled into the interpreter.  ssl, sqlite3,
# bz2, lzma, readline, curses, tkinter, dbm and _uuid are not needed.
readonly REQUIRED_BUILTIN_MODULES=(
    _ctypes zlib _struct binascii math select _socket _posixsubprocess _json
    _pickle _datetime unicodedata pyexpat _sha256 _sha1 _md5 _random fcntl
    termios _csv _bisect _heapq array _contextvars _opcode
)

readonly REQUIRED_PACKAGES=(
    musl-tools build-essential dpkg-dev linux-libc-dev pkgconf
    file binutils tar gzip bzip2 xz-utils curl ca-certificates
)

readonly DEB_SRC_FILE_BASE=/etc/apt/sources.list.d/pipfix-e2e-deb-src
readonly APT_LOCK_WAIT=(-o DPkg::Lock::Timeout=600)
export DEBIAN_FRONTEND=noninteractive

# Set by main().
CACHE_ROOT=
KEY=
STAGE=       # temporary build directory, renamed to the cache dir when done
WORK=        # sources, sysroot and build trees (inside $STAGE, deleted at the end)
LOG_DIR=     # per-step logs (inside $STAGE, kept)
SYSROOT=     # private musl sysroot: static zlib and libffi, compiler wrapper
JOBS=        # parallel make jobs
SOURCE_LISTING=  # `apt-get source --print-uris` output
REPORTED=0       # set once an error message has been printed
FAILED_COMMAND=  # last failing command, for errors that `die` did not report
declare -A ORIG_TARBALL=() ORIG_SIZE=() ORIG_SHA256=() ORIG_URI=() DEBIAN_VERSION=()

# --------------------------------------------------------------------------
# Helpers

log() {
    printf '[%s] %s\n' "$SCRIPT_NAME" "$*" >&2
}

die() {
    log "ERROR: $*"
    REPORTED=1
    exit 1
}

require_root() {
    [[ $EUID -eq 0 ]] || die "must run as root $1"
}

# run_step NAME COMMAND...: run COMMAND (typically a shell function) with
# errexit in effect, its output going to $LOG_DIR/NAME.log.  On failure print
# the log's tail, and the tail of $CONFIG_LOG if the caller set it, then exit.
run_step() {
    local name=$1
    shift
    local logfile=$LOG_DIR/$name.log
    local started=$SECONDS rc
    log "$name ..."
    # Not `( ... ) || rc=$?`: errexit is ignored inside a `||` list.
    set +e
    (
        set -e
        "$@"
    ) >"$logfile" 2>&1
    rc=$?
    set -e
    if [[ $rc -ne 0 ]]; then
        log "step '$name' failed (exit status $rc); last 60 lines of $logfile:"
        tail -n 60 "$logfile" >&2
        if [[ -n ${CONFIG_LOG:-} && -f $CONFIG_LOG ]]; then
            log "last 40 lines of $CONFIG_LOG:"
            tail -n 40 "$CONFIG_LOG" >&2
        fi
        REPORTED=1
        exit 1
    fi
    log "$name done ($((SECONDS - started)) s)"
}

sha256_of() {
    local sum
    sum=$(sha256sum "$1")
    printf '%s\n' "${sum%% *}"
}

# --------------------------------------------------------------------------
# apt: packages, deb-src entries, source package metadata

apt_get_update() {
    log "apt-get update"
    apt-get "${APT_LOCK_WAIT[@]}" update -q >&2
}

ensure_packages() {
    local pkg status missing=()
    for pkg in "${REQUIRED_PACKAGES[@]}"; do
        status=$(dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null || true)
        [[ $status == ii* ]] || missing+=("$pkg")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    require_root "to install ${missing[*]}"
    apt_get_update
    log "apt-get install ${missing[*]}"
    apt-get "${APT_LOCK_WAIT[@]}" install -y -q --no-install-recommends "${missing[@]}" >&2
}

# deb822 stanzas (*.sources) for the machine's suites, rewritten as deb-src.
# shellcheck disable=SC2016  # awk program, not shell
readonly AWK_DEB822_TO_DEB_SRC='
function for_codename(field,    words, n, i) {
    n = split(field, words, /[ \t]+/)
    for (i = 2; i <= n; i++)
        if (words[i] == codename || index(words[i], codename "-") == 1)
            return 1
    return 0
}
BEGIN { RS = "" }
{
    n = split($0, lines, "\n")
    types = ""
    suites = ""
    for (i = 1; i <= n; i++) {
        if (lines[i] ~ /^Types:/) types = lines[i]
        else if (lines[i] ~ /^Suites:/) suites = lines[i]
    }
    if (types !~ /[: \t]deb([ \t]|$)/ || types ~ /deb-src/ || !for_codename(suites))
        next
    for (i = 1; i <= n; i++)
        print (lines[i] ~ /^Types:/ ? "Types: deb-src" : lines[i])
    print ""
}'

# One-line entries (*.list) for the machine's suites, rewritten as deb-src.
# shellcheck disable=SC2016  # awk program, not shell
readonly AWK_ONE_LINE_TO_DEB_SRC='
$1 == "deb" {
    for (i = 2; i <= NF; i++)
        if ($i == codename || index($i, codename "-") == 1) {
            sub(/^[ \t]*deb/, "deb-src")
            print
            next
        }
}'

# Add deb-src entries mirroring the existing deb entries of this machine's
# suites (e.g. bookworm, bookworm-updates, bookworm-security), keeping their
# URIs and options such as Signed-By.  The entries go into a file of our own;
# the system's files are left untouched.
enable_deb_src() {
    local codename file deb822="" one_line=""
    # shellcheck source=/dev/null
    codename=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
    [[ -n $codename ]] || die "cannot determine the release codename from /etc/os-release"
    for file in /etc/apt/sources.list.d/*.sources; do
        [[ -f $file && $file != "$DEB_SRC_FILE_BASE.sources" ]] || continue
        deb822+=$(awk -v codename="$codename" "$AWK_DEB822_TO_DEB_SRC" "$file")
        deb822+=$'\n\n'
    done
    for file in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $file && $file != "$DEB_SRC_FILE_BASE.list" ]] || continue
        one_line+=$(awk -v codename="$codename" "$AWK_ONE_LINE_TO_DEB_SRC" "$file")
        one_line+=$'\n'
    done
    if [[ $deb822 == *Types:* ]]; then
        log "enabling deb-src for $codename in $DEB_SRC_FILE_BASE.sources"
        printf '# Added by pipfix %s (apt-get source).\n%s' "$SCRIPT_NAME" "$deb822" \
            >"$DEB_SRC_FILE_BASE.sources.tmp"
        mv -f "$DEB_SRC_FILE_BASE.sources.tmp" "$DEB_SRC_FILE_BASE.sources"
    elif [[ $one_line == *deb-src* ]]; then
        log "enabling deb-src for $codename in $DEB_SRC_FILE_BASE.list"
        printf '# Added by pipfix %s (apt-get source).\n%s' "$SCRIPT_NAME" "$one_line" \
            >"$DEB_SRC_FILE_BASE.list.tmp"
        mv -f "$DEB_SRC_FILE_BASE.list.tmp" "$DEB_SRC_FILE_BASE.list"
    else
        die "no apt 'deb' entries for $codename found to derive deb-src entries from"
    fi
}

# What `apt-get source` would download: "'URI' FILE SIZE SHA256:HEX" lines.
# Reads only the local Sources index.
apt_source_uris() {
    apt-get source --only-source --print-uris "${SOURCE_PACKAGES[@]}" 2>/dev/null
}

# Sets SOURCE_LISTING, enabling deb-src and updating the index if needed.
ensure_source_index() {
    if SOURCE_LISTING=$(apt_source_uris); then
        return 0
    fi
    require_root "to enable deb-src and update the apt Sources index"
    local targets
    # shellcheck disable=SC2016  # apt's format syntax, not shell
    targets=$(apt-get indextargets --format '$(IDENTIFIER)')
    if ! grep -qx Sources <<<"$targets"; then
        enable_deb_src
    fi
    apt_get_update
    SOURCE_LISTING=$(apt_source_uris) \
        || die "apt cannot find the source packages ${SOURCE_PACKAGES[*]} (see 'apt-get source --print-uris ${SOURCE_PACKAGES[*]}')"
}

# Fill ORIG_TARBALL/ORIG_SIZE/ORIG_SHA256/ORIG_URI/DEBIAN_VERSION from SOURCE_LISTING.
# DEBIAN_VERSION comes from the .dsc file name, so it lacks any epoch.
read_source_metadata() {
    local uri file size hash pkg
    while read -r uri file size hash; do
        [[ $uri == \'* ]] || continue
        for pkg in "${SOURCE_PACKAGES[@]}"; do
            [[ $file == "${pkg}_"* ]] || continue
            if [[ $file =~ \.orig\.tar\.[a-z0-9]+$ ]]; then
                [[ $hash == SHA256:* ]] || die "apt lists no SHA256 for $file"
                ORIG_TARBALL[$pkg]=$file
                ORIG_URI[$pkg]=${uri//\'/}
                ORIG_SIZE[$pkg]=$size
                ORIG_SHA256[$pkg]=${hash#SHA256:}
            elif [[ $file == *.dsc ]]; then
                DEBIAN_VERSION[$pkg]=${file#"${pkg}_"}
                DEBIAN_VERSION[$pkg]=${DEBIAN_VERSION[$pkg]%.dsc}
            fi
        done
    done <<<"$SOURCE_LISTING"
    for pkg in "${SOURCE_PACKAGES[@]}"; do
        [[ -n ${ORIG_TARBALL[$pkg]:-} ]] || die "no upstream tarball listed for source package $pkg"
    done
}

compute_key() {
    local pkg
    {
        printf 'script %s\n' "$(sha256_of "$SCRIPT_PATH")"
        for pkg in "${SOURCE_PACKAGES[@]}"; do
            printf '%s %s %s %s\n' "$pkg" "${ORIG_TARBALL[$pkg]}" "${ORIG_SIZE[$pkg]}" "${ORIG_SHA256[$pkg]}"
        done
    } | sha256sum | cut -c1-16
}

# --------------------------------------------------------------------------
# Build steps (each runs under run_step, output in its log)

fetch_sources() {
    local pkg file
    mkdir -p "$WORK/downloads"
    cd "$WORK/downloads"
    # --tar-only: the .dsc and Debian diff are not needed (no Debian patches
    # are applied), and apt still checks the tarballs against the signed index.
    apt-get source --only-source --download-only --tar-only "${SOURCE_PACKAGES[@]}" \
        || fetch_from_main_archive
    for pkg in "${SOURCE_PACKAGES[@]}"; do
        file=${ORIG_TARBALL[$pkg]}
        [[ $(sha256_of "$file") == "${ORIG_SHA256[$pkg]}" ]] \
            || die "$file does not match the SHA256 from the apt Sources index"
        mkdir -p "$WORK/src/$pkg"
        tar -xf "$file" -C "$WORK/src/$pkg" --strip-components=1
        echo "unpacked $file into $WORK/src/$pkg"
    done
}

# A security update that keeps the upstream version lists its orig tarball
# under the security archive's pool, which need not carry it (apt-get source
# then fails with 404).  The same file -- name, size and SHA256 from the
# signed index, checked by fetch_sources -- is in the main archive's pool.
fetch_from_main_archive() {
    local pkg file uri
    for pkg in "${SOURCE_PACKAGES[@]}"; do
        file=${ORIG_TARBALL[$pkg]}
        [[ -f $file ]] && continue
        uri=${ORIG_URI[$pkg]}
        [[ $uri == */debian-security/pool/updates/* ]] \
            || die "apt could not fetch $file from $uri"
        uri=${uri/\/debian-security\/pool\/updates\//\/debian\/pool\/}
        echo "$file: not in the security archive; fetching $uri"
        curl --fail --silent --show-error --location --retry 3 -o "$file.partial" "$uri" \
            || die "cannot fetch $file from $uri"
        mv "$file.partial" "$file"
    done
}

# pip download of exactly the wheels upstream bundles, pinned by hash.  The
# machine's pip configuration (config files, PIP_* index variables) is ignored
# so that the files come from PyPI itself.
download_bundled_wheels() {
    local dest=$1 requirements=$WORK/ensurepip-wheels.txt wheel name version
    : >"$requirements"
    for wheel in "${!BUNDLED_WHEEL_SHA256[@]}"; do
        IFS=- read -r name version _ <<<"$wheel"
        printf '%s==%s --hash=sha256:%s\n' "$name" "$version" "${BUNDLED_WHEEL_SHA256[$wheel]}" \
            >>"$requirements"
    done
    if ! python3 -m pip --version >/dev/null 2>&1; then
        require_root "to install python3-pip"
        apt-get "${APT_LOCK_WAIT[@]}" install -y -q --no-install-recommends python3-pip
    fi
    env -u PIP_INDEX_URL -u PIP_EXTRA_INDEX_URL -u PIP_FIND_LINKS -u PIP_NO_INDEX \
        PIP_CONFIG_FILE=/dev/null \
        python3 -m pip download --no-deps --require-hashes --only-binary=:all: \
        --index-url https://pypi.org/simple --dest "$dest" -r "$requirements"
}

# ensurepip/_bundled must hold exactly the wheels upstream 3.11.2 ships.
check_bundled_wheels() {
    local bundled=$WORK/src/$PYTHON_SOURCE/Lib/ensurepip/_bundled wheel found=()
    mkdir -p "$bundled"
    for wheel in "${!BUNDLED_WHEEL_SHA256[@]}"; do
        if [[ ! -f $bundled/$wheel ]]; then
            echo "$wheel is not in the source tarball; downloading it from PyPI"
            download_bundled_wheels "$bundled"
            break
        fi
    done
    for wheel in "${!BUNDLED_WHEEL_SHA256[@]}"; do
        [[ $(sha256_of "$bundled/$wheel") == "${BUNDLED_WHEEL_SHA256[$wheel]}" ]] \
            || die "$bundled/$wheel does not have the expected sha256"
        echo "ok: $wheel sha256 ${BUNDLED_WHEEL_SHA256[$wheel]}"
    done
    found=("$bundled"/*.whl)
    [[ ${#found[@]} -eq ${#BUNDLED_WHEEL_SHA256[@]} ]] \
        || die "unexpected wheels in $bundled: ${found[*]##*/}"
    grep -q '^_PIP_VERSION = "22.3.1"$' "$bundled/../__init__.py" \
        || die "ensurepip/__init__.py does not pin pip 22.3.1"
    grep -q '^_SETUPTOOLS_VERSION = "65.5.0"$' "$bundled/../__init__.py" \
        || die "ensurepip/__init__.py does not pin setuptools 65.5.0"
}

# Compiler wrapper and kernel headers for the private musl sysroot.
prepare_sysroot() {
    mkdir -p "$SYSROOT/bin" "$SYSROOT/include" "$SYSROOT/lib"
    # Debian's gcc reports the glibc multiarch triplet (x86_64-linux-gnu) for
    # --print-multiarch even through musl-gcc, while CPython's configure detects
    # x86_64-linux-musl from the C library and aborts on the mismatch.  A native
    # musl toolchain prints nothing here, so do the same.
    cat >"$SYSROOT/bin/musl-cc" <<'EOF'
#!/bin/sh
if [ "$#" -eq 1 ] && [ "$1" = --print-multiarch ]; then
    exit 0
fi
exec musl-gcc "$@"
EOF
    chmod +x "$SYSROOT/bin/musl-cc"
    # musl-gcc only searches musl's own headers.  libffi and some CPython modules
    # (socket, ossaudiodev, ...) want the Linux UAPI headers; expose the ones from
    # linux-libc-dev, as a musl distribution's linux-headers package would.
    local multiarch
    multiarch=$(gcc -print-multiarch)
    ln -sfn /usr/include/linux "$SYSROOT/include/linux"
    ln -sfn /usr/include/asm-generic "$SYSROOT/include/asm-generic"
    ln -sfn "/usr/include/$multiarch/asm" "$SYSROOT/include/asm"
    "$SYSROOT/bin/musl-cc" --version
}

build_zlib() {
    cd "$WORK/src/zlib"
    CC=$SYSROOT/bin/musl-cc CFLAGS=-O2 ./configure --static --prefix="$SYSROOT"
    make -j"$JOBS"
    make install
}

build_libffi() {
    cd "$WORK/src/libffi"
    # An explicit CFLAGS stops libffi from adding host-specific -march flags.
    ./configure --prefix="$SYSROOT" --disable-shared --enable-static \
        --disable-docs --disable-multi-os-directory \
        CC="$SYSROOT/bin/musl-cc" CFLAGS=-O2 CPPFLAGS="-I$SYSROOT/include"
    make -j"$JOBS"
    make install
}

configure_python() {
    cd "$WORK/src/$PYTHON_SOURCE"
    # --with-ensurepip=no: `make install` would otherwise run ensurepip, which
    #   crashes on this interpreter (that crash is what the tests are about).
    # MODULE_BUILDTYPE=static: render Modules/Setup.stdlib for static linking.
    # py_cv_module_xxlimited*=n/a: example modules that can only be built shared.
    # PKG_CONFIG_*: find zlib and libffi in the sysroot, never the host's.
    ./configure \
        --prefix="$BUILD_PREFIX" \
        --disable-shared \
        --with-ensurepip=no \
        --disable-test-modules \
        MODULE_BUILDTYPE=static \
        py_cv_module_xxlimited=n/a \
        py_cv_module_xxlimited_35=n/a \
        CC="$SYSROOT/bin/musl-cc" \
        CPPFLAGS="-I$SYSROOT/include" \
        LDFLAGS="-static -L$SYSROOT/lib" \
        PKG_CONFIG_PATH= \
        PKG_CONFIG_LIBDIR="$SYSROOT/lib/pkgconfig"

    grep -qx '\*static\*' Modules/Setup.stdlib \
        || die "configure did not render Modules/Setup.stdlib for static modules"
    grep -q '^zlib ' Modules/Setup.stdlib \
        || die "configure did not detect the static zlib in $SYSROOT"

    # On Linux, 3.11 does not feed Setup.stdlib to makesetup (setup.py builds
    # shared extensions instead), so use it as Setup.local, as Setup.stdlib's
    # header suggests.  _ctypes is still left to setup.py in 3.11; add it
    # explicitly.  makesetup treats lines containing '=' as variable
    # assignments, hence -DNAME instead of -DNAME=1.  The modules setup.py would
    # still try to build (as shared objects, against host glibc headers) are
    # disabled.
    {
        printf '# Generated by %s.\n\n' "$SCRIPT_NAME"
        cat Modules/Setup.stdlib
        cat <<EOF

*static*
_ctypes _ctypes/_ctypes.c _ctypes/callbacks.c _ctypes/callproc.c _ctypes/stgdict.c _ctypes/cfield.c -DHAVE_FFI_PREP_CIF_VAR -DHAVE_FFI_PREP_CLOSURE_LOC -DHAVE_FFI_CLOSURE_ALLOC -I$SYSROOT/include $SYSROOT/lib/libffi.a

*disabled*
_curses _curses_panel _dbm readline
EOF
    } >Modules/Setup.local
    cat Modules/Setup.local
}

build_python() {
    cd "$WORK/src/$PYTHON_SOURCE"
    # The first make regenerates the Makefile from Setup.local and continues.
    make -j"$JOBS"
}

install_python() {
    cd "$WORK/src/$PYTHON_SOURCE"
    make install DESTDIR="$WORK/destdir"
    mv "$WORK/destdir$BUILD_PREFIX" "$STAGE/upstream-ctypes"
    cp -a "$STAGE/upstream-ctypes" "$STAGE/pbs-ctypes"
}

# Wrap the module-level `pythonapi = PyDLL(None)` in try/except OSError, as
# python-build-standalone's build-cpython.sh does for its static builds.
patch_pbs_ctypes() {
    local prefix=$STAGE/pbs-ctypes
    local init=$prefix/lib/python$PY_VERSION/ctypes/__init__.py
    "$prefix/bin/python3" - "$init" <<'EOF'
import pathlib
import sys

path = pathlib.Path(sys.argv[1])
old = "else:\n    pythonapi = PyDLL(None)\n"
new = (
    "else:\n"
    "    try:\n"
    "        pythonapi = PyDLL(None)\n"
    "    except OSError:\n"
    "        pythonapi = None\n"
)
text = path.read_text()
if text.count(old) != 1:
    sys.exit(f"{path}: expected exactly one occurrence of {old!r}")
path.write_text(text.replace(old, new))
print(f"patched {path}")
EOF
    # Refresh the byte code that `make install` compiled from the original.
    "$prefix/bin/python3" -m compileall -q -o 0 -o 1 -o 2 "$init"
    diff -u "$STAGE/upstream-ctypes/lib/python$PY_VERSION/ctypes/__init__.py" "$init" || true
}

# --------------------------------------------------------------------------
# Verification

verify_static_binary() {
    local prefix=$1 binary=$1/bin/python$PY_VERSION description headers
    description=$(file -b "$binary")
    echo "file: $description"
    [[ $description == *"statically linked"* ]] || die "$binary is not statically linked"
    headers=$(readelf -lW "$binary")
    [[ $headers != *INTERP* ]] || die "$binary has an INTERP program header"
    [[ $headers == *"Elf file type is EXEC"* ]] || die "$binary is not a non-PIE executable"
    local shared
    shared=$(find "$prefix" -name '*.so' -o -name '*.so.*')
    [[ -z $shared ]] || die "shared objects were installed: $shared"
}

verify_prefix() {
    local prefix=$1
    "$prefix/bin/python3" - "$prefix" "${REQUIRED_BUILTIN_MODULES[@]}" <<'EOF'
import importlib
import os
import sys

prefix, required = sys.argv[1], sys.argv[2:]
if os.path.realpath(sys.prefix) != os.path.realpath(prefix):
    sys.exit(f"sys.prefix is {sys.prefix}, expected {prefix}: the install is not relocatable")
not_builtin = sorted(set(required) - set(sys.builtin_module_names))
if not_builtin:
    sys.exit(f"not compiled into the interpreter: {', '.join(not_builtin)}")
for name in required:
    importlib.import_module(name)
import hashlib
hashlib.sha256(b"pipfix").hexdigest()
print(f"ok: {len(required)} required modules are built in and import; sys.prefix={sys.prefix}")
EOF
}

verify_upstream_ctypes() {
    "$1/bin/python3" - <<'EOF'
import sys

try:
    import ctypes  # noqa: F401
except OSError as exc:
    print(f"upstream-ctypes: import ctypes -> OSError: {exc}")
    if "Dynamic loading not supported" not in str(exc):
        sys.exit("unexpected OSError message")
else:
    sys.exit("upstream-ctypes: import ctypes unexpectedly succeeded")
EOF
}

verify_pbs_ctypes() {
    "$1/bin/python3" - <<'EOF'
import sys

import ctypes

print("pbs-ctypes: import ctypes -> ok, ctypes.pythonapi =", ctypes.pythonapi)
if ctypes.pythonapi is not None:
    sys.exit("expected ctypes.pythonapi to be None")
# libffi closures work in the static binary.
double = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: 2 * x)
if double(21) != 42:
    sys.exit("ctypes callback returned a wrong result")
try:
    ctypes.CDLL(None)
except OSError as exc:
    print(f"pbs-ctypes: ctypes.CDLL(None) -> OSError: {exc}")
else:
    sys.exit("ctypes.CDLL(None) unexpectedly succeeded")
EOF
}

# `python3 -m venv` must fail: ensurepip's bundled pip crashes on this
# interpreter, which is the bug pipfix fixes.
verify_venv_fails() {
    local prefix=$1 name=$2 logfile=$LOG_DIR/venv-$2.log
    local venv=$WORK/venv-$name
    if "$prefix/bin/python3" -m venv "$venv" >"$logfile" 2>&1; then
        die "$name: 'python3 -m venv' unexpectedly succeeded (see $logfile)"
    fi
    log "$name: 'python3 -m venv' failed as expected:"
    tail -n 1 "$logfile" | sed 's/^/    /' >&2
    # venv hides the output of the ensurepip run that failed; repeat that run
    # in the half-created venv to record pip's error.
    {
        echo "--- $venv/bin/python3 -m ensurepip --upgrade --default-pip"
        "$venv/bin/python3" -m ensurepip --upgrade --default-pip || true
    } >>"$logfile" 2>&1
    # Show pip's innermost frame of its own code and the exception.
    log "$name: pip's error inside ensurepip:"
    awk '/^ERROR: Exception:/ { on = 1 }
         on && /^  File ".*\.whl\/pip\// { frame = $0 }
         on && /^[[:alnum:]_.]*Error: / { print frame; print; exit }' "$logfile" \
        | sed 's/^/    /' >&2
}

write_build_info() {
    local pkg
    {
        echo "key: $KEY"
        echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -srm)"
        echo "script sha256: $(sha256_of "$SCRIPT_PATH")"
        for pkg in "${SOURCE_PACKAGES[@]}"; do
            echo "source: $pkg ${DEBIAN_VERSION[$pkg]:-?} ${ORIG_TARBALL[$pkg]} sha256 ${ORIG_SHA256[$pkg]}"
        done
        echo "musl: $(dpkg-query -W -f='${Version}' musl-dev)"
        echo "configure: $(sed -n 's/^CONFIG_ARGS=[[:space:]]*//p' "$WORK/src/$PYTHON_SOURCE/Makefile")"
        echo "file: $(file -b "$STAGE/upstream-ctypes/bin/python$PY_VERSION")"
        echo -n "built-in modules: "
        "$STAGE/upstream-ctypes/bin/python3" -c 'import sys; print(" ".join(sorted(sys.builtin_module_names)))'
    } >"$STAGE/build-info.txt"
}

# --------------------------------------------------------------------------

on_exit() {
    local rc=$?
    if [[ $rc -ne 0 && $REPORTED -eq 0 ]]; then
        log "ERROR: exit status $rc after: ${FAILED_COMMAND:-?}"
    fi
    if [[ -n $STAGE && -d $STAGE ]]; then
        if [[ $rc -ne 0 && ${PIPFIX_E2E_KEEP_FAILED:-0} == 1 ]]; then
            log "keeping the failed build in $STAGE"
        else
            rm -rf "$STAGE"
        fi
    fi
}

main() {
    # Keep stdout for the result path only.
    exec 3>&1 1>&2
    trap 'FAILED_COMMAND="$BASH_COMMAND (line $LINENO)"' ERR
    trap on_exit EXIT
    trap 'log "interrupted"; REPORTED=1; exit 130' INT
    trap 'log "terminated"; REPORTED=1; exit 143' TERM

    command -v apt-get >/dev/null || die "this script needs a Debian-based system with apt-get"
    command -v flock >/dev/null || die "flock (util-linux) is required"

    local cache_base=${PIPFIX_E2E_CACHE:-${XDG_CACHE_HOME:-${HOME:?}/.cache}/pipfix-e2e}
    mkdir -p "$cache_base"
    CACHE_ROOT=$(realpath "$cache_base")
    # CPython's build cannot cope with whitespace in paths.
    [[ $CACHE_ROOT != *[[:space:]]* ]] || die "the cache path must not contain whitespace: $CACHE_ROOT"
    JOBS=${PIPFIX_E2E_JOBS:-2}

    ensure_source_index
    read_source_metadata
    KEY=$(compute_key)
    local final=$CACHE_ROOT/static-musl-$KEY

    if [[ -f $final/.complete ]]; then
        log "using cached build $final"
        printf '%s\n' "$final" >&3
        return 0
    fi

    # One build per key at a time; whoever waited may find it done.
    exec 9>"$CACHE_ROOT/.static-musl-$KEY.lock"
    if ! flock -n 9; then
        log "another build for $KEY is running; waiting for it"
        flock 9
    fi
    if [[ -f $final/.complete ]]; then
        log "using cached build $final"
        printf '%s\n' "$final" >&3
        return 0
    fi
    # Holding the lock, anything else with our key is debris of an
    # interrupted build (or a directory without the marker).
    rm -rf "$final" "$CACHE_ROOT/.static-musl-$KEY.tmp."*

    STAGE=$(mktemp -d "$CACHE_ROOT/.static-musl-$KEY.tmp.XXXXXX")
    chmod 755 "$STAGE"  # mktemp creates it 0700; the cache is meant to be shared
    WORK=$STAGE/work
    LOG_DIR=$STAGE/logs
    SYSROOT=$WORK/sysroot
    mkdir -p "$WORK" "$LOG_DIR"
    log "building static musl CPython $PY_VERSION in $STAGE (logs in $LOG_DIR)"
    local pkg
    for pkg in "${SOURCE_PACKAGES[@]}"; do
        log "source: $pkg ${DEBIAN_VERSION[$pkg]:-?} (${ORIG_TARBALL[$pkg]})"
    done

    local started=$SECONDS
    run_step install-packages ensure_packages
    run_step fetch-sources fetch_sources
    run_step check-bundled-wheels check_bundled_wheels
    run_step prepare-sysroot prepare_sysroot
    CONFIG_LOG=$WORK/src/zlib/configure.log run_step build-zlib build_zlib
    CONFIG_LOG=$WORK/src/libffi/config.log run_step build-libffi build_libffi
    CONFIG_LOG=$WORK/src/$PYTHON_SOURCE/config.log run_step configure-python configure_python
    run_step build-python build_python
    run_step install-python install_python
    run_step patch-pbs-ctypes patch_pbs_ctypes

    local prefix
    run_step verify-static-binary verify_static_binary "$STAGE/upstream-ctypes"
    for prefix in upstream-ctypes pbs-ctypes; do
        run_step "verify-$prefix" verify_prefix "$STAGE/$prefix"
    done
    run_step verify-upstream-ctypes-import verify_upstream_ctypes "$STAGE/upstream-ctypes"
    run_step verify-pbs-ctypes-import verify_pbs_ctypes "$STAGE/pbs-ctypes"
    cat "$LOG_DIR/verify-static-binary.log" \
        "$LOG_DIR/verify-upstream-ctypes-import.log" \
        "$LOG_DIR/verify-pbs-ctypes-import.log" >&2
    for prefix in upstream-ctypes pbs-ctypes; do
        verify_venv_fails "$STAGE/$prefix" "$prefix"
    done

    write_build_info
    rm -rf "$WORK"
    date -u +%Y-%m-%dT%H:%M:%SZ >"$STAGE/.complete"
    mv -T "$STAGE" "$final"
    STAGE=
    log "built in $((SECONDS - started)) s: $final"
    printf '%s\n' "$final" >&3
}

main "$@"
