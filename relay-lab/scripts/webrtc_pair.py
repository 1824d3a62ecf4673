"""Two headless Chromium pages open a WebRTC DataChannel to each other with the TURN server as
their only ICE server and relayed candidates only (iceTransportPolicy 'relay'), exchange
messages, and report the selected candidate pair from getStats(). Driven over the Chrome
DevTools Protocol; prints one JSON line.

Usage: webrtc_pair.py TURN_URL USERNAME PASSWORD MESSAGES [PACE_MS]
"""

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import websockets

PORT = 9333

PAGE_SETUP = """
(config) => {
  window.got = [];
  window.pc = new RTCPeerConnection({
    iceServers: [{urls: [config.url], username: config.username, credential: config.password}],
    iceTransportPolicy: 'relay',
  });
  window.pc.ondatachannel = (e) => {
    window.dc = e.channel;
    window.dc.onmessage = (m) => window.got.push(m.data);
  };
  window.gathered = () => new Promise((resolve) => {
    if (window.pc.iceGatheringState === 'complete') return resolve();
    window.pc.addEventListener('icegatheringstatechange', () => {
      if (window.pc.iceGatheringState === 'complete') resolve();
    });
  });
  return true;
}
"""

OFFER = """
async () => {
  window.dc = window.pc.createDataChannel('chat');
  window.dc.onmessage = (m) => window.got.push(m.data);
  await window.pc.setLocalDescription(await window.pc.createOffer());
  await window.gathered();
  return JSON.stringify(window.pc.localDescription);
}
"""

ANSWER = """
async (offer) => {
  await window.pc.setRemoteDescription(JSON.parse(offer));
  await window.pc.setLocalDescription(await window.pc.createAnswer());
  await window.gathered();
  return JSON.stringify(window.pc.localDescription);
}
"""

ACCEPT = """
async (answer) => { await window.pc.setRemoteDescription(JSON.parse(answer)); return true; }
"""

OPEN = """
async () => {
  for (let i = 0; i < 200; i++) {
    if (window.dc && window.dc.readyState === 'open') return true;
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}
"""

SEND = """
async (args) => {
  for (let i = 0; i < args.n; i++) {
    window.dc.send(args.tag + ' ' + i);
    if (args.pace) await new Promise((r) => setTimeout(r, args.pace));
  }
  return true;
}
"""

RECEIVED = """
async (n) => {
  for (let i = 0; i < 100 && window.got.length < n; i++) {
    await new Promise((r) => setTimeout(r, 100));
  }
  return window.got;
}
"""

SELECTED_PAIR = """
async () => {
  const stats = await window.pc.getStats();
  let pair = null;
  stats.forEach((s) => {
    if (s.type === 'candidate-pair' && s.state === 'succeeded' && (s.nominated || s.selected)) pair = s;
  });
  if (!pair) return null;
  const local = stats.get(pair.localCandidateId);
  const remote = stats.get(pair.remoteCandidateId);
  return {
    local: local.candidateType, remote: remote.candidateType,
    local_address: local.address + ':' + local.port,
    remote_address: remote.address + ':' + remote.port,
    relay_protocol: local.relayProtocol || null,
    bytes_sent: pair.bytesSent, bytes_received: pair.bytesReceived,
  };
}
"""


class Browser:
    def __init__(self, ws):
        self.ws = ws
        self.next_id = 0
        self.pending = {}

    async def reader(self):
        async for raw in self.ws:
            msg = json.loads(raw)
            if "id" in msg and msg["id"] in self.pending:
                self.pending.pop(msg["id"]).set_result(msg)

    async def call(self, method, params=None, session=None):
        self.next_id += 1
        future = asyncio.get_event_loop().create_future()
        self.pending[self.next_id] = future
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        await self.ws.send(json.dumps(msg))
        reply = await asyncio.wait_for(future, timeout=60)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    async def page(self):
        target = await self.call("Target.createTarget", {"url": "about:blank"})
        attached = await self.call(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        return attached["sessionId"]

    async def run(self, session, function, argument=None):
        expression = f"({function})({json.dumps(argument)})"
        result = await self.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            session,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(json.dumps(result["exceptionDetails"]))
        return result["result"].get("value")


def start_chromium(profile):
    binary = shutil.which("chromium") or "/usr/bin/chromium"
    return subprocess.Popen(
        [
            binary,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--ignore-certificate-errors",
            f"--user-data-dir={profile}",
            f"--remote-debugging-port={PORT}",
            "--remote-debugging-address=127.0.0.1",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def debugger_url():
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/json/version", timeout=1) as r:
                return json.load(r)["webSocketDebuggerUrl"]
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("chromium did not open its debugging port")


async def main():
    url, username, password, messages = sys.argv[1:5]
    messages = int(messages)
    # Milliseconds between messages: a call that lasts (a relay drains meanwhile, say).
    pace = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    profile = tempfile.mkdtemp(prefix="relay-lab-chromium-")
    chromium = start_chromium(profile)
    try:
        async with websockets.connect(debugger_url(), max_size=None) as ws:
            browser = Browser(ws)
            reading = asyncio.create_task(browser.reader())
            a, b = await browser.page(), await browser.page()
            config = {"url": url, "username": username, "password": password}
            for page in (a, b):
                await browser.run(page, PAGE_SETUP, config)
            offer = await browser.run(a, OFFER)
            answer = await browser.run(b, ANSWER, offer)
            await browser.run(a, ACCEPT, answer)
            opened = await browser.run(a, OPEN) and await browser.run(b, OPEN)
            result = {"open": opened}
            if opened:
                print("OPEN", flush=True)
                await asyncio.gather(
                    browser.run(a, SEND, {"n": messages, "tag": "a->b", "pace": pace}),
                    browser.run(b, SEND, {"n": messages, "tag": "b->a", "pace": pace}),
                )
                result["b_got"] = await browser.run(b, RECEIVED, messages)
                result["a_got"] = await browser.run(a, RECEIVED, messages)
                result["pair_a"] = await browser.run(a, SELECTED_PAIR)
                result["pair_b"] = await browser.run(b, SELECTED_PAIR)
            print(json.dumps(result))
            reading.cancel()
    finally:
        chromium.terminate()
        try:
            chromium.wait(timeout=5)
        except subprocess.TimeoutExpired:
            chromium.kill()
        shutil.rmtree(profile, ignore_errors=True)


asyncio.run(main())
