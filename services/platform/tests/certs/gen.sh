#!/usr/bin/env bash
# Regenerates the test CA, a server certificate for localhost/127.0.0.1 and a client certificate.
set -euo pipefail
cd "$(dirname "$0")"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 36500 \
  -subj "/CN=crm test CA" -keyout ca.key -out ca.pem
for who in server client; do
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=crm test $who" \
    -keyout "$who.key" -out "$who.csr"
  if [ "$who" = server ]; then
    ext="subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth"
  else
    ext="extendedKeyUsage=clientAuth"
  fi
  openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 36500 \
    -extfile <(printf '%s\n' "$ext") -out "$who.pem"
  rm "$who.csr"
done
rm -f ca.srl ca.key
