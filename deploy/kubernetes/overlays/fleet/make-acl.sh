#!/bin/sh
# Writes Valkey's ACL file from the mounted Redis password (init container "acl" of
# Deployment nimgate-redis). Only the password's SHA-256 is written (`#<hex>`), to a
# memory-backed emptyDir; the password itself passes through no command-line argument, no
# environment variable and no other file (the shell pipes the file into sha256sum).
#
#   sh make-acl.sh PASSWORD_FILE ACL_FILE KEY_PREFIX
#
# The user "default" (nimgate sends `AUTH <password>`) may run only what nimgate sends (AUTH,
# SELECT, EVALSHA, EVAL) and what its two scripts call (TIME, GET, SET, INCRBY, EXPIRE), on
# keys under KEY_PREFIX: (its [ratelimit] key_prefix) only; no pub/sub channels.
set -eu
secret=$1
out=$2
prefix=$3
case $prefix in
  "" | *[!A-Za-z0-9_.-]*)
    echo "make-acl: the key prefix must be [A-Za-z0-9_.-]+" >&2
    exit 1
    ;;
esac
# nimgate strips one trailing newline (CR LF too) from the file: a password is one line.
if [ "$(wc -l <"$secret")" -gt 1 ]; then
  echo "make-acl: $secret must hold one line, the password" >&2
  exit 1
fi
hash=$(tr -d '\r\n' <"$secret" | sha256sum | cut -d' ' -f1)
if [ "$hash" = "$(printf '' | sha256sum | cut -d' ' -f1)" ]; then
  echo "make-acl: $secret is empty" >&2
  exit 1
fi
umask 077
printf 'user default on #%s resetkeys ~%s:* resetchannels -@all %s\n' "$hash" "$prefix" \
  "+auth +hello +select +evalsha +eval +time +get +set +incrby +expire" >"$out.tmp"
mv "$out.tmp" "$out"
echo "make-acl: wrote $out (user default, keys ${prefix}:*)"
