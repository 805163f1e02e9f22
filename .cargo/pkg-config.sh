#!/bin/sh
# pkg-config for build scripts: `PKG_CONFIG` in .cargo/config.toml points here.
#
# rdkafka-sys 4.9.0 builds libcurl from source (feature `curl-static`) but does not tell
# librdkafka's `configure` where that libcurl.a is, so configure's libcurl check fails quietly and
# librdkafka is built without its HTTP client: no OAUTHBEARER OIDC (rust-rdkafka issue 804, fixed
# only in releases that bundle librdkafka 2.12, which we cannot take: see Cargo.toml).
# rdkafka-sys's build script, and only it (it is the one crate depending on curl-sys), has
# DEP_CURL_ROOT, curl-sys's output directory: answer configure's questions about libcurl from
# there. Every other question goes to the real pkg-config, if there is one.
if [ -n "$DEP_CURL_ROOT" ]; then
    for arg in "$@"; do last=$arg; done
    if [ "$last" = libcurl ]; then
        case " $* " in
            *" --cflags "*) echo "-DCURL_STATICLIB -I$DEP_CURL_ROOT/include" ;;
            *" --libs "*) echo "-L$DEP_CURL_ROOT/build -lcurl" ;;
            *" --modversion "*) echo "8.0.0" ;;
        esac
        exit 0
    fi
fi
if command -v pkg-config >/dev/null 2>&1; then
    exec pkg-config "$@"
fi
# No pkg-config on this machine: say so for every package, as a missing pkg-config would.
if [ "$1" = --version ]; then
    echo "0.29.2"
    exit 0
fi
echo "pkg-config is not installed (.cargo/pkg-config.sh answers only for rdkafka-sys's libcurl)" >&2
exit 1
