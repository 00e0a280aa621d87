#!/usr/bin/env bash
# Writes the hand-made seeds of corpus/decode_record and corpus/parse_inputs.
# (corpus/ops_vs_model holds small inputs kept from a fuzzing run: the bytes
# of an `arbitrary` operation sequence are not written by hand.)
set -euo pipefail
cd "$(dirname "$0")"

hex() { # hex FILE BYTES...: writes the bytes given in hex
    local file=$1
    shift
    printf '%s' "$*" | tr -d ' \n' | xxd -r -p >"$file"
}

d=corpus/decode_record
mkdir -p "$d"
# The worked example of docs/format.md (codec.rs: DOCUMENTED_HEX).
hex "$d/record-documented" \
    01 02 70 31 fd c0 8f ee cf 8b 01 00 00 01 05 31 2e 32 2e 30 fb 2c 01 \
    10 41 62 43 64 45 66 47 68 49 6a 4b 6c 4d 6e 4f 70 02 65 6e \
    fd 00 68 e5 cf 8b 01 00 00 00 00 \
    02 04 6e 61 6d 65 05 22 41 64 61 22 06 76 69 73 69 74 73 01 33
# No version, a deadline and a node id, empty data.
hex "$d/record-deadline-node" \
    01 01 61 fd c0 8f ee cf 8b 01 00 00 00 01 \
    10 41 41 41 41 41 41 41 41 41 41 41 41 41 41 41 41 05 70 74 2d 42 52 \
    fd 00 68 e5 cf 8b 01 00 00 01 fd 80 d9 f1 cf 8b 01 00 00 \
    01 06 6e 6f 64 65 2d 31 00
# The worked example of docs/format.md in record format 3, with metadata.
hex "$d/record-format-3-documented" \
    03 02 70 31 fd c0 8f ee cf 8b 01 00 00 01 05 31 2e 32 2e 30 fb 2c 01 \
    10 41 62 43 64 45 66 47 68 49 6a 4b 6c 4d 6e 4f 70 02 65 6e \
    fd 00 68 e5 cf 8b 01 00 00 00 00 \
    02 04 6e 61 6d 65 05 22 41 64 61 22 06 76 69 73 69 74 73 01 33 fb 2c 01 \
    01 06 64 65 76 69 63 65 05 70 68 6f 6e 65
# A record of an unknown (newer) format.
hex "$d/record-format-2" 02 02 70 31
# A store format 2 expiries key: 8-byte big-endian time, 32-byte digest.
hex "$d/expiry-key" 00 00 01 8b cf ee 8f c0 $(printf '07 %.0s' $(seq 32))
# A store format 3 records key (format 2's actor entry name had the same
# shape): length, actor id "p1", 32-byte digest.
hex "$d/actor-key" 02 70 31 $(printf 'ab %.0s' $(seq 32))
# A store format 3 expiries key: 8-byte big-endian time, then a records key.
hex "$d/expiry-key-format-3" 00 00 01 8b cf ee 8f c0 02 70 31 $(printf '07 %.0s' $(seq 32))

p=corpus/parse_inputs
mkdir -p "$p"
printf '%s' 'p1:abcDEF_-0123456789abcdef' >"$p/full-key"
printf '%s' 'guild:7:AAAAAAAAAAAAAAAAAAAAAA' >"$p/full-key-colon-actor"
printf '%s' 'no-colon' >"$p/full-key-malformed"
printf '%s' '10m' >"$p/time-code"
printf '%s' '1h 30m 15s' >"$p/time-code-compound"
printf '%s' 'loggedOut' >"$p/reason-standard"
printf '%s' 'banned.for-cheating_2' >"$p/reason-custom"
printf '%s' 'keyMismatch' >"$p/reason-validation"
printf '%s' '{"coins": [1, 2.5e3, null], "name": "Ada \u00e9"}' >"$p/json"
