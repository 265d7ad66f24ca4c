#!/bin/sh
# Reinstall every host of one profile, one at a time, with pxestack ctl.
#
#   PXESTACK_SERVER=http://198.18.0.1:8080 PXESTACK_TOKEN=... \
#       sh examples/ctl_reinstall_profile.sh worker
#
# Each host is marked for reinstall only if its record did not change since we read it
# (--if-match with the ETag from `status`), so a concurrent change by another operator or by
# the host itself is never overwritten.  Power-cycling is left to your BMC tooling: the
# IPMI address is printed for it.  Exit codes follow pxestack ctl: 1 server error, 2 usage,
# 3 host gone.
set -eu

profile=${1:?usage: $0 PROFILE}

pxestack ctl list --profile "$profile" --state running --fields serial --no-legend |
while read -r serial; do
    status=$(pxestack ctl status "$serial")
    etag=$(printf '%s\n' "$status" | sed -n 's/^ETag: *//p')
    ipmi=$(printf '%s\n' "$status" | sed -n 's/^IPMI: *//p')
    pxestack ctl reinstall "$serial" --if-match "$etag"
    echo "$serial: marked for reinstall; power-cycle it via IPMI $ipmi"
done
