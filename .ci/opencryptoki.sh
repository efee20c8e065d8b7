#!/usr/bin/env bash
# Sets up opencryptoki's software token as a second PKCS#11 implementation for
# tests/opencryptoki.rs, and prints the HARPOCRATES_TEST_OPENCRYPTOKI value to export.
# Needs root (system-wide store, pkcsslotd). Safe to run again: it re-initialises the token.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
if [ ! -x /usr/sbin/pkcsslotd ] || ! command -v pkcs11-tool >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq opencryptoki opensc >/dev/null
fi
systemd-tmpfiles --create /usr/lib/tmpfiles.d/opencryptoki.conf >/dev/null 2>&1 || true
if ! pgrep -x pkcsslotd >/dev/null; then
    /usr/sbin/pkcsslotd
fi
module=/usr/lib/x86_64-linux-gnu/pkcs11/libopencryptoki.so
slot=3          # the soft token (swtok)
pin=87651234    # opencryptoki PINs are 4 to 8 characters
pkcs11-tool --module "$module" --slot "$slot" --init-token --so-pin 87654321 --label harpotest >/dev/null
pkcs11-tool --module "$module" --slot "$slot" --init-pin --so-pin 87654321 --pin "$pin" >/dev/null
echo "$module|$slot|$pin"
