#!/usr/bin/env bash
# grouptun as a peer of the reference harness ../shared/bench/peers (its
# peer-*.sh contract: `up` returns once traffic flows and writes peer.env,
# `down` is idempotent):
#   cd ../shared/bench/peers && sudo bash run.sh plain wireguard-go /ABS/PATH/scripts/peer-grouptun.sh
#   overlay: pb-a 10.202.5.x, pb-b 10.202.5.y (/24, assigned by the provider), UDP 51825,
#   MTU $PB_MTU (1420); provider (HTTPS :8443) in pb-b, like nebula's lighthouse.
# The provider's CPU is not counted (PEER_PIDS_* = the two member daemons).
# Keys, credentials and provider state live on tmpfs ($GT_PB_WORK) and are removed on `down`.
# Environment: GT_OFFLOAD=auto|off sets [daemon] offload if this tree has the key.
set -euo pipefail
GT_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# Run by run.sh, PB_HERE is exported; run by hand, use the harness next to the repo.
PB_LIB=${PB_HERE:-$GT_REPO/../shared/bench/peers}/lib.sh
if [[ ! -f $PB_LIB ]]; then
    echo "peer-grouptun.sh: needs the peers harness ../shared/bench/peers beside the repository (no $PB_LIB)" >&2
    exit 1
fi
source "$PB_LIB"

NAME=grouptun
DIR=$PB_RUN/$NAME
GT_PB_WORK=${GT_PB_WORK:-/dev/shm/gt-pbpeer}

peer_up() {
    peer_down
    mkdir -p "$DIR"
    local -a extra=()
    [[ -z ${GT_OFFLOAD:-} ]] || extra=(--offload "$GT_OFFLOAD")
    PYTHONPATH=$GT_REPO${PYTHONPATH:+:$PYTHONPATH} timeout 110 \
        python3 -m grouptun.lab.bench_peer up --workdir "$GT_PB_WORK" --piddir "$DIR" \
        --mtu "$PB_MTU" "${extra[@]}" || pb_die "grouptun bench_peer up failed"
    local ADDR_A ADDR_B VERSION OFFLOAD
    # shellcheck source=/dev/null
    source <(sed -n 's/^\(ADDR_A\|ADDR_B\|OFFLOAD\)=\(.*\)$/\1=\2/p' "$DIR/up.env")
    VERSION=$(sed -n 's/^VERSION=//p' "$DIR/up.env")
    pb_wait_ping "$PB_NS_A" "$ADDR_B" 20
    pb_write_env "$DIR/peer.env" \
        PEER_ADDR_A="$ADDR_A" PEER_ADDR_B="$ADDR_B" PEER_MTU="$PB_MTU" \
        PEER_PIDS_A="$(<"$DIR/a.pid")" PEER_PIDS_B="$(<"$DIR/b.pid")" \
        PEER_VERSION="grouptun $VERSION" \
        PEER_NOTES="Python daemon (this tree), offload=$OFFLOAD, provider in pb-b not counted; logs $DIR/logs after down"
}

peer_down() {
    # Members first (they would otherwise retry the provider), then the provider.
    pb_stop_pidfiles "$DIR/a.pid" "$DIR/b.pid" "$DIR/provider.pid"
    # Keep the logs (no secrets in them) until the next bring-up, like the other peers.
    if [[ -d $GT_PB_WORK/logs ]]; then rm -rf "$DIR/logs"; mkdir -p "$DIR"; cp -r "$GT_PB_WORK/logs" "$DIR/logs"; fi
    rm -rf -- "$GT_PB_WORK"
    rm -f "$DIR/peer.env" "$DIR/up.env"
}

pb_peer_main "$@"
