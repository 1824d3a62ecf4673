"""Relays datagrams to an echo peer through a TURN server with aioice (a TURN client nobody in
this project wrote), and prints what happened as one JSON line.

Usage: aioice_turn.py SERVER_IP SERVER_PORT USERNAME PASSWORD udp|tcp PEER_IP PEER_PORT COUNT
"""

import asyncio
import json
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
    server_ip, server_port, username, password, transport, peer_ip, peer_port, count = sys.argv[1:]
    server = (server_ip, int(server_port))
    peer = (peer_ip, int(peer_port))
    count = int(count)
    turn, echoes = await asyncio.wait_for(
        create_turn_endpoint(
            Echoes, server, username=username, password=password, transport=transport
        ),
        timeout=10,
    )
    relayed = turn.get_extra_info("sockname")
    sent = []
    for i in range(count):
        message = f"aioice {transport} {i}".encode()
        sent.append(message)
        turn.sendto(message, peer)
        await asyncio.sleep(0.02)
    deadline = asyncio.get_event_loop().time() + 5
    while len(echoes.received) < count and asyncio.get_event_loop().time() < deadline:
        echoes.arrived.clear()
        try:
            await asyncio.wait_for(echoes.arrived.wait(), timeout=0.5)
        except asyncio.TimeoutError:
            pass
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
