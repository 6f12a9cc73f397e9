#!/usr/bin/env bash
# Generate tests/vectors/akma-kdf-extra.json with an implementation independent of the Python
# code under test: the KDF input strings S are assembled here byte by byte from hex, and every
# HMAC-SHA-256 is computed by `openssl dgst -sha256 -mac HMAC -macopt hexkey:...`.
#
# Formulas (TS 33.535 Annex A over TS 33.220 Annex B):
#   S = FC || P0 || L0 [|| P1 || L1], Li = 2-octet big-endian length of Pi
#   K_AKMA = HMAC(K_AUSF, 0x80 || "AKMA"  || 0x0004 || SUPI digits || len)
#   A-TID  = HMAC(K_AUSF, 0x81 || "A-TID" || 0x0005 || SUPI digits || len)
#   K_AF   = HMAC(K_AKMA, 0x82 || AF_ID || len), AF_ID = FQDN || 5-octet Ua* protocol id
#   A-KID  = <RID>.<hex A-TID>@<realm>   (this project's chosen format, see docs/akma.md)
# K_AUSF values are SHA-256 of a fixed label, so they are reproducible yet not patterned.
#
# Usage: tests/vectors/make_akma_extra.sh > tests/vectors/akma-kdf-extra.json
# Needs: bash, openssl, od, sed, tr.
set -euo pipefail

str_hex() { printf '%s' "$1" | od -An -v -tx1 | tr -d ' \n'; }
len16() { printf '%04x' $(( ${#1} / 2 )); }   # argument is hex; result is 2-octet length
hex_bin() { printf "$(printf '%s' "$1" | sed 's/../\\x&/g')"; }
hmac() { hex_bin "$2" | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$1" | sed 's/^.*= //'; }
sha256_label() { printf '%s' "$1" | openssl dgst -sha256 | sed 's/^.*= //'; }

emit_case() {
  local name=$1 label=$2 supi=$3 rid=$4 realm=$5 fqdn=$6 ua=$7 last=$8
  local k_ausf digits p1 s_k_akma k_akma s_a_tid a_tid af_id s_k_af k_af
  k_ausf=$(sha256_label "$label")
  digits=${supi#imsi-}
  p1=$(str_hex "$digits")
  s_k_akma="80$(str_hex AKMA)0004${p1}$(len16 "$p1")"
  s_a_tid="81$(str_hex A-TID)0005${p1}$(len16 "$p1")"
  k_akma=$(hmac "$k_ausf" "$s_k_akma")
  a_tid=$(hmac "$k_ausf" "$s_a_tid")
  af_id="$(str_hex "$fqdn")${ua}"
  s_k_af="82${af_id}$(len16 "$af_id")"
  k_af=$(hmac "$k_akma" "$s_k_af")
  cat <<JSON
    {
      "name": "$name",
      "k_ausf_label": "$label",
      "k_ausf": "$k_ausf",
      "supi": "$supi",
      "s_k_akma": "$s_k_akma",
      "k_akma": "$k_akma",
      "s_a_tid": "$s_a_tid",
      "a_tid": "$a_tid",
      "rid": "$rid",
      "realm": "$realm",
      "a_kid": "$rid.$a_tid@$realm",
      "af_fqdn": "$fqdn",
      "ua_protocol_id": "$ua",
      "af_id_hex": "$af_id",
      "s_k_af": "$s_k_af",
      "k_af": "$k_af"
    }$last
JSON
}

cat <<JSON
{
  "source": "Computed from TS 33.535 Annex A and TS 33.220 Annex B formulas by tests/vectors/make_akma_extra.sh: KDF inputs assembled in shell, HMAC-SHA-256 by $(openssl version | tr -d '"'). Independent of the Python implementation. Not official 3GPP test data.",
  "generator": "tests/vectors/make_akma_extra.sh",
  "cases": [
JSON
emit_case "imsi-prefixed-tls-profile-aes128gcm" "akma-extra-1" "imsi-208950000000031" "42" \
  "5gc.mnc095.mcc208.3gppnetwork.org" "payments.af2.example.org" "0100011301" ","
emit_case "bare-digits-mnc3-tls13-shared-key" "akma-extra-2" "310260123456789" "0" \
  "5gc.mnc260.mcc310.3gppnetwork.org" "af1.example.com" "0100000007" ","
emit_case "short-imsi-minimal-fqdn-tls-profile-aes256gcm" "akma-extra-3" "imsi-00101" "7" \
  "home.example.net" "a.b" "0100011302" ""
cat <<JSON
  ]
}
JSON
