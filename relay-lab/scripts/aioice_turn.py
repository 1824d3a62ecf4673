"""Relays datagrams to an echo peer through a TURN server with aioice (a TURN client nobody in
this project wrote), and prints what happened as one JSON line.

Usage: aioice_turn.py SERVER_IP SERVER_PORT USERNAME PASSWORD udp|tcp|tls PEER_IP PEER_PORT COUNT
       [SIZE GAP_MS CAFILE]

SIZE pads each message to that many bytes (at least its text); GAP_MS is the pause between
messages (20 by default; 0 sends them all at once, as a burst); CAFILE is the certificate TLS
trusts (needed for tls).
"""

import asyncio
import json
import ssl
import sys

from aioice.turn import create_turn_endpoint


class Echoes(asyncio.DatagramProtocol):
    def __init__(self):
        self.received = []
        self.arrived = asyncio.Event()

    def datagram_received(self, data, addr):
        self.received.append(data)
        self.arrived.set()


async def main():
    server_ip, server_port, username, password, transport, peer_ip, peer_port, count = sys.argv[1:9]
    size, gap_ms, cafile = (sys.argv[9:12] + ["0", "20", ""][len(sys.argv[9:12]):])[:3]
    server = (server_ip, int(server_port))
    peer = (peer_ip, int(peer_port))
    count, size, gap = int(count), int(size), int(gap_ms) / 1000
    context = None
    if transport == "tls":
        context = ssl.create_default_context(cafile=cafile)
    turn, echoes = await asyncio.wait_for(
        create_turn_endpoint(
            Echoes,
            server,
            username=username,
            password=password,
            transport="udp" if transport == "udp" else "tcp",
            ssl=context,
        ),
        timeout=10,
    )
    relayed = turn.get_extra_info("sockname")
    sent = []
    for i in range(count):
        message = f"aioice {transport} {i} ".encode()
        message += b"." * max(0, size - len(message))
        sent.append(message)
        turn.sendto(message, peer)
        if gap:
            await asyncio.sleep(gap)
    # A burst leaves once the channel is bound (sendto only queues it: over TCP or TLS it
    # leaves as fast as the relay reads, which may hold the uploads for the return path); then
    # wait for its echoes while they keep coming: until 5 s pass without one (at most 60 s).
    clock = asyncio.get_event_loop().time
    quiet_until = clock() + 5 + count * size / 10_000_000
    give_up = clock() + 60
    seen = len(echoes.received)
    while len(echoes.received) < count and clock() < min(quiet_until, give_up):
        echoes.arrived.clear()
        try:
            await asyncio.wait_for(echoes.arrived.wait(), timeout=0.5)
        except asyncio.TimeoutError:
            pass
        if len(echoes.received) > seen:
            seen = len(echoes.received)
            quiet_until = clock() + 5
    turn.close()
    await asyncio.sleep(0.2)
    exact = sorted(echoes.received) == sorted(sent)
    print(json.dumps({
        "relayed": list(relayed) if relayed else None,
        "sent": len(sent),
        "received": len(echoes.received),
        "exact": exact,
    }))


asyncio.run(main())
